"""``pi-server token add NAME --qr``: the connect URL and its QR code."""

import io

import pytest
import segno
from twisted.python import usage

from piserver.cli import main
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore
from piserver.tokencli import connect_url


def token_cli(capsys, *args):
    status = main(["token", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_qr_code_of_the_connect_url(capsys, tmp_path):
    status, out, err = token_cli(
        capsys, "add", "phone", "--qr", "--url", "ws://box.local:4000", "--data-dir", str(tmp_path)
    )
    assert status == 0
    token, url, *qr_lines = out.splitlines()
    assert url == f"ws://box.local:4000/rpc?token={token}"
    assert (
        DeviceTokenStore(tmp_path / DEVICE_TOKENS_FILE, clock=lambda: 0.0).verify(token) == "phone"
    )
    # The code printed is the code of that URL (two rows of modules per line).
    expected = io.StringIO()
    segno.make(url, error="m").terminal(out=expected, compact=True)
    assert qr_lines == expected.getvalue().splitlines()
    assert len(qr_lines) > 10 and set("".join(qr_lines)) <= set("█▀▄ ")
    assert token not in err


def test_default_url_is_this_host_and_port(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PI_SERVER_PORT", "5555")
    monkeypatch.setattr("socket.gethostname", lambda: "myhost")
    status, out, _ = token_cli(capsys, "add", "tablet", "--qr", "--data-dir", str(tmp_path))
    token, url = out.splitlines()[:2]
    assert status == 0 and url == f"ws://myhost:5555/rpc?token={token}"


def test_without_qr_only_the_token(capsys, tmp_path):
    status, out, _ = token_cli(capsys, "add", "phone", "--data-dir", str(tmp_path))
    assert status == 0 and len(out.splitlines()) == 1


@pytest.mark.parametrize(
    "server, expected",
    [
        ("ws://h:1", "ws://h:1/rpc?token=T"),
        ("wss://h.example/", "wss://h.example/rpc?token=T"),
        ("https://h.example/pi", "wss://h.example/pi/rpc?token=T"),
        ("http://h:3141/rpc", "ws://h:3141/rpc?token=T"),
    ],
)
def test_connect_urls(server, expected):
    assert connect_url(server, "T") == expected


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "ftp://h"],
        ["--url", "ws://h?token=x"],
        ["--url", "ws://h:1"],
    ],
)
def test_bad_qr_options(capsys, tmp_path, args):
    qr = [] if args == ["--url", "ws://h:1"] else ["--qr"]
    status, _, err = token_cli(capsys, "add", "phone", *qr, *args, "--data-dir", str(tmp_path))
    assert status == 2 and "--url" in err
    assert not (tmp_path / DEVICE_TOKENS_FILE).exists()


def test_connect_url_refuses_other_schemes():
    with pytest.raises(usage.UsageError):
        connect_url("gopher://h", "T")


def test_qr_code_of_the_web_clients_sign_in_link(capsys, tmp_path):
    status, out, _ = token_cli(
        capsys,
        "add",
        "phone",
        "--qr",
        "--web",
        "--url",
        "wss://pi.example/base",
        "--data-dir",
        str(tmp_path),
    )
    assert status == 0
    token, url, *qr_lines = out.splitlines()
    assert url == f"https://pi.example/base/ui#token={token}"
    expected = io.StringIO()
    segno.make(url, error="m").terminal(out=expected, compact=True)
    assert qr_lines == expected.getvalue().splitlines()
    assert token_cli(capsys, "add", "tablet", "--web", "--data-dir", str(tmp_path))[0] == 2
