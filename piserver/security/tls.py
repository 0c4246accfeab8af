"""
TLS on the one port: ``--tls-cert``/``--tls-key`` turn a port number into an
``ssl:`` endpoint, and the files are checked at start so a bad or mismatched
pair is a clear usage error instead of a failure at the first connection.
"""

import os

from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.error import VerifyError


class TlsFilesError(ValueError):
    """The certificate or key cannot be used; the message names the file and why."""


def check_tls_files(cert_path: str, key_path: str) -> None:
    """
    Load the certificate (PEM, optionally followed by its chain) and the
    unencrypted PEM private key, and check that the key belongs to the
    certificate. Raises TlsFilesError.
    """
    cert_pem = _read(cert_path, "--tls-cert")
    key_pem = _read(key_path, "--tls-key")
    try:
        certificate = ssl.Certificate.loadPEM(cert_pem)
    except crypto.Error:
        raise TlsFilesError(f"--tls-cert {cert_path}: not a PEM certificate") from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem, passphrase=_no_passphrase)
    except _Encrypted:
        raise TlsFilesError(
            f"--tls-key {key_path}: the key is encrypted; give an unencrypted key "
            "(e.g. `openssl pkey -in KEY -out PLAIN`) readable only by this user"
        ) from None
    except crypto.Error:
        raise TlsFilesError(f"--tls-key {key_path}: not a PEM private key") from None
    try:
        ssl.PrivateCertificate.fromCertificateAndKeyPair(certificate, ssl.KeyPair(key))
    except VerifyError:
        raise TlsFilesError(
            f"--tls-key {key_path} does not belong to the certificate in --tls-cert {cert_path}"
        ) from None


def tls_endpoint(port: int, host: str, cert_path: str, key_path: str) -> str:
    """The ``ssl:`` endpoint description serving ``port`` on ``host`` with these files."""
    return (
        f"ssl:{port}:interface={quoteStringArgument(host)}"
        f":privateKey={quoteStringArgument(os.path.abspath(key_path))}"
        f":certKey={quoteStringArgument(os.path.abspath(cert_path))}"
    )


def is_tls_endpoint(description: str) -> bool:
    return description.partition(":")[0].strip().lower() == "ssl"


class _Encrypted(Exception):
    pass


def _no_passphrase(*args):
    # Asked only for an encrypted key: refuse instead of prompting on the terminal.
    raise _Encrypted()


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as pem:
            return pem.read()
    except OSError as e:
        raise TlsFilesError(f"{option} {path}: cannot read it: {e.strerror or e}") from None
