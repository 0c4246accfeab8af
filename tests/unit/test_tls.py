"""TLS files checked at start: --tls-cert/--tls-key and ssl: endpoint strings."""

import os

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from piserver.security.tls import TlsFilesError, check_tls_files, is_tls_endpoint, tls_endpoint
from piserver.tap import Options
from tests.support.piagent import VERSION_ONLY_PI
from tests.support.tls import write_self_signed


@pytest.fixture
def pair(tmp_path):
    return write_self_signed(tmp_path / "tls")


@pytest.fixture
def other_pair(tmp_path):
    return write_self_signed(tmp_path / "tls", name="other")


def parse(tmp_path, *args):
    options = Options(environ={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    options.parseOptions(["--data-dir", str(tmp_path / "data"), "--pi", VERSION_ONLY_PI, *args])
    return options.config


def test_good_pair_passes(pair):
    check_tls_files(*map(str, pair))


def test_tls_options_make_an_ssl_endpoint(tmp_path, pair):
    cert, key = pair
    config = parse(
        tmp_path, "--port", "4443", "--host", "::1", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    assert config.tls is True
    assert config.endpoint.startswith(r"ssl:4443:interface=\:\:1:privateKey=")
    assert f"certKey={str(cert)}" in config.endpoint.replace("\\:", ":")
    from twisted.internet import reactor

    serverFromString(reactor, config.endpoint)  # the description parses and loads


def test_paths_with_colons_are_quoted(tmp_path):
    cert, key = write_self_signed(tmp_path / "a:b")
    endpoint = tls_endpoint(0, "127.0.0.1", str(cert), str(key))
    from twisted.internet import reactor

    serverFromString(reactor, endpoint)


def test_plain_port_is_not_tls(tmp_path):
    assert parse(tmp_path).tls is False


def test_explicit_ssl_endpoint(tmp_path, pair):
    cert, key = pair
    config = parse(tmp_path, "--port", f"ssl:0:privateKey={key}:certKey={cert}")
    assert config.tls is True
    assert is_tls_endpoint("SSL:443") and not is_tls_endpoint("tcp:443")


def test_mismatched_pair_is_a_usage_error(tmp_path, pair, other_pair):
    cert, _ = pair
    _, other_key = other_pair
    with pytest.raises(TlsFilesError, match="does not belong"):
        check_tls_files(str(cert), str(other_key))
    with pytest.raises(usage.UsageError, match="does not belong to the certificate"):
        parse(tmp_path, "--tls-cert", str(cert), "--tls-key", str(other_key))
    with pytest.raises(usage.UsageError, match="not usable.*do not match"):
        parse(tmp_path, "--port", f"ssl:0:privateKey={other_key}:certKey={cert}")


def test_missing_unreadable_and_garbage_files(tmp_path, pair):
    cert, key = pair
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    cases = [
        ([str(tmp_path / "missing.crt"), str(key)], r"--tls-cert .*missing.crt: cannot read"),
        ([str(cert), str(tmp_path / "missing.key")], r"--tls-key .*missing.key: cannot read"),
        ([str(tmp_path), str(key)], "--tls-cert .*: cannot read"),  # a directory
        ([str(garbage), str(key)], "not a PEM certificate"),
        ([str(key), str(key)], "not a PEM certificate"),
        ([str(cert), str(garbage)], "not a PEM private key"),
        ([str(cert), str(cert)], "not a PEM private key"),
    ]
    for (cert_arg, key_arg), message in cases:
        with pytest.raises(usage.UsageError, match=message):
            parse(tmp_path, "--tls-cert", cert_arg, "--tls-key", key_arg)
    with pytest.raises(usage.UsageError, match="--port"):
        parse(tmp_path, "--port", f"ssl:0:privateKey={garbage}:certKey={cert}")


def test_encrypted_key_is_refused_without_prompting(tmp_path, pair):
    from cryptography.hazmat.primitives import serialization

    cert, key = pair
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(usage.UsageError, match="encrypted"):
        parse(tmp_path, "--tls-cert", str(cert), "--tls-key", str(encrypted))


def test_both_or_neither(tmp_path, pair):
    cert, key = pair
    with pytest.raises(usage.UsageError, match="go together"):
        parse(tmp_path, "--tls-cert", str(cert))
    with pytest.raises(usage.UsageError, match="go together"):
        parse(tmp_path, "--tls-key", str(key))
    with pytest.raises(usage.UsageError, match="need a port number"):
        parse(tmp_path, "--port", "tcp:0", "--tls-cert", str(cert), "--tls-key", str(key))
    with pytest.raises(usage.UsageError, match="1-65535"):
        parse(tmp_path, "--port", "70000", "--tls-cert", str(cert), "--tls-key", str(key))
