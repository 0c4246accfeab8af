"""
Self-signed certificates made by the tests, and a wss:// client that trusts one.
"""

import datetime
import ipaddress
from pathlib import Path
from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketClientFactory, connectWS
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl

from tests.support.wsclient import ConnectionRefusedByServer, RpcClient, RpcClientProtocol


def write_self_signed(directory: Path, name: str = "cert", hostname: str = "localhost"):
    """Write ``<name>.crt`` and ``<name>.key`` (PEM) for ``hostname`` and 127.0.0.1; return
    ``(cert_path, key_path)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(hostname),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def connect_wss(reactor, port, cert_path: Path, token=None, hostname="localhost", headers=None):
    """Like ``RpcClient.connect``, over TLS to 127.0.0.1, trusting only ``cert_path``
    and checking that it names ``hostname``."""
    client = RpcClient()
    url = f"wss://127.0.0.1:{port}/rpc"
    if token is not None:
        url += "?" + urlencode({"token": token})
    factory = WebSocketClientFactory(url, headers=headers or {}, reactor=reactor)
    factory.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0)
    factory.protocol = RpcClientProtocol
    factory.client = client
    client.closed.addCallback(
        lambda info: (
            (
                client.opened.errback(ConnectionRefusedByServer(info))
                if not client.opened.called
                else None
            )
            or info
        )
    )
    trust = ssl.Certificate.loadPEM(cert_path.read_bytes())
    connectWS(factory, ssl.optionsForClientTLS(hostname, trustRoot=trust))
    return client.opened
