"""
Hardening over real sockets: wss with a certificate the test makes, plain ws
refused on the TLS port, and the Origin check of browser upgrades.
"""

import os

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from piserver.service import build_service
from piserver.tap import Options
from tests.support.piagent import VERSION_ONLY_PI
from tests.support.tls import connect_wss, write_self_signed
from tests.support.wsclient import ConnectionRefusedByServer, RpcClient

TOKEN = "hardening-test-token"


def start_server(data_dir, *extra):
    options = Options(environ={"PATH": os.environ.get("PATH", ""), "HOME": str(data_dir)})
    options.parseOptions(
        [
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--data-dir",
            str(data_dir),
            "--pi",
            VERSION_ONLY_PI,
            "--auth-token",
            TOKEN,
            *extra,
        ]
    )
    service = build_service(options.config, reactor)
    service.startService()
    return service


def hello(client):
    return client.call("hello", {"client": {"name": "tests", "version": "1"}})


@pytest.fixture
def certificate(tmp_path):
    return write_self_signed(tmp_path / "tls")


@pytest_twisted.async_yield_fixture
async def tls_server(tmp_path, certificate):
    cert, key = certificate
    service = start_server(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key))
    yield service
    await service.stopService()


@pytest_twisted.async_yield_fixture
async def plain_server(tmp_path):
    service = start_server(tmp_path / "data")
    yield service
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_wss_round_trip(tls_server, certificate):
    cert, _ = certificate
    assert tls_server.config.tls is True
    client = await connect_wss(reactor, tls_server.address.port, cert, token=TOKEN)
    result = await hello(client)
    assert result["server"]["name"] == "pi-server"
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_https_health_on_the_same_port(tls_server, certificate):
    from twisted.internet import ssl
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    cert, _ = certificate
    trust = ssl.Certificate.loadPEM(cert.read_bytes())
    http = treq.client.HTTPClient(Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=trust)))
    response = await http.get(f"https://localhost:{tls_server.address.port}/health")
    assert response.code == 200
    assert (await response.json())["ok"] is True


@pytest_twisted.ensureDeferred
async def test_wss_client_not_trusting_the_certificate_fails(tls_server, tmp_path):
    stranger, _ = write_self_signed(tmp_path / "stranger")
    with pytest.raises(ConnectionRefusedByServer):
        await connect_wss(reactor, tls_server.address.port, stranger, token=TOKEN)


@pytest_twisted.ensureDeferred
async def test_plain_ws_refused_on_the_tls_port(tls_server):
    with pytest.raises(ConnectionRefusedByServer):
        await RpcClient.connect(reactor, tls_server.address.port, token=TOKEN)


@pytest.mark.parametrize("origin", [None, "same"])
@pytest_twisted.ensureDeferred
async def test_same_origin_and_no_origin_accepted(plain_server, origin):
    port = plain_server.address.port
    headers = {"Origin": f"http://127.0.0.1:{port}"} if origin else {}
    client = await RpcClient.connect(reactor, port, token=TOKEN, headers=headers)
    assert "connectionId" in await hello(client)
    await client.disconnect()


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://127.0.0.1:1", "null", "https://127.0.0.1:{port}"]
)
@pytest_twisted.ensureDeferred
async def test_cross_origin_upgrade_refused(plain_server, origin):
    port = plain_server.address.port
    with pytest.raises(ConnectionRefusedByServer) as refused:
        await RpcClient.connect(
            reactor, port, token=TOKEN, headers={"Origin": origin.format(port=port)}
        )
    assert "403" in str(refused.value)


@pytest_twisted.ensureDeferred
async def test_cross_origin_refused_with_403_over_http(plain_server):
    port = plain_server.address.port
    response = await treq.get(
        f"http://127.0.0.1:{port}/rpc?token={TOKEN}",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Origin": "https://evil.example",
        },
    )
    assert response.code == 403
    await response.content()


@pytest_twisted.ensureDeferred
async def test_own_https_origin_accepted_over_tls(tls_server, certificate):
    cert, _ = certificate
    port = tls_server.address.port
    client = await connect_wss(
        reactor, port, cert, token=TOKEN, headers={"Origin": f"https://127.0.0.1:{port}"}
    )
    assert "connectionId" in await hello(client)
    await client.disconnect()
    with pytest.raises(ConnectionRefusedByServer) as refused:
        await connect_wss(
            reactor, port, cert, token=TOKEN, headers={"Origin": f"http://127.0.0.1:{port}"}
        )
    assert "403" in str(refused.value)
