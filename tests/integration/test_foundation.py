"""
The foundation over real sockets: HTTP endpoints, token checks on the upgrade,
text and binary frames, the frame size limit, concurrency and garbage frames.
"""

import json
import os
import random

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from piserver.service import build_service
from piserver.tap import Options
from tests.support.piagent import VERSION_ONLY_PI
from tests.support.wsclient import ConnectionRefusedByServer, RpcClient

TOKEN = "test-token-0123456789"


def make_options(data_dir, *extra):
    options = Options(environ={"PATH": os.environ.get("PATH", ""), "HOME": str(data_dir)})
    options.parseOptions(
        [
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--data-dir",
            str(data_dir),
            "--pi",
            VERSION_ONLY_PI,
            *extra,
        ]
    )
    return options


@pytest_twisted.async_yield_fixture
async def start_server(tmp_path):
    """Factory: ``start_server(*options)`` runs a server on loopback; stopped afterwards."""
    started = []

    def start(*extra):
        service = build_service(make_options(tmp_path / "data", *extra).config, reactor)
        started.append(service)
        service.startService()
        return service

    yield start
    for service in started:
        await service.stopService()


@pytest.fixture
def server(start_server):
    return start_server("--auth-token", TOKEN)


def port_of(service):
    return service.address.port


def hello(client):
    return client.call("hello", {"client": {"name": "tests", "version": "1"}})


@pytest_twisted.ensureDeferred
async def test_http_root_and_health(server):
    base = f"http://127.0.0.1:{port_of(server)}"
    root = await (await treq.get(base + "/")).json()
    assert root["name"] == "pi-server"
    assert root["endpoints"] == {"websocket": "/rpc", "health": "/health"}
    response = await treq.get(base + "/health")
    assert response.code == 200
    assert (await response.json())["ok"] is True
    missing = await treq.get(base + "/nope")
    assert missing.code == 404
    assert (await missing.json())["error"]["code"] == "not_found"
    body = json.dumps(root) + json.dumps(await (await treq.get(base + "/health")).json())
    assert TOKEN not in body


@pytest_twisted.ensureDeferred
async def test_token_via_query_and_header(server):
    by_query = await RpcClient.connect(reactor, port_of(server), token=TOKEN)
    result = await hello(by_query)
    assert result["server"]["name"] == "pi-server"
    assert result["capabilities"]["resume"] is True
    await by_query.disconnect()
    by_header = await RpcClient.connect(
        reactor, port_of(server), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert (await hello(by_header))["connectionId"] != result["connectionId"]
    await by_header.disconnect()


@pytest.mark.parametrize("token", [None, "wrong-token"])
@pytest_twisted.ensureDeferred
async def test_missing_or_wrong_token_refused_before_upgrade(server, token):
    with pytest.raises(ConnectionRefusedByServer):
        await RpcClient.connect(reactor, port_of(server), token=token)
    response = await treq.get(
        f"http://127.0.0.1:{port_of(server)}/rpc",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    assert response.code == 401


@pytest_twisted.ensureDeferred
async def test_no_auth(start_server):
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        service = start_server("--no-auth")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    warnings = [e for e in logged if e.get("log_level") == LogLevel.critical]
    assert any("AUTHENTICATION IS OFF" in formatEvent(e) for e in warnings)
    client = await RpcClient.connect(reactor, port_of(service))
    assert "connectionId" in await hello(client)
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_text_and_binary_frames_and_error_codes(server):
    client = await RpcClient.connect(reactor, port_of(server), token=TOKEN)
    assert "connectionId" in await client.call(
        "hello", {"client": {"name": "t", "version": "1"}}, binary=True
    )

    cases = [
        (b"\xff\xfe not utf-8", "parse_error", None),
        (b"{not json", "parse_error", None),
        (b"[1, 2]", "invalid_request", None),
        (b'{"v": 1, "kind": "event", "id": "a", "method": "hello"}', "invalid_request", "a"),
        (b'{"v": 2, "kind": "request", "id": "b", "method": "hello"}', "invalid_request", "b"),
        (b'{"v": 1, "kind": "request", "method": "hello"}', "invalid_request", None),
        (b'{"v": 1, "kind": "request", "id": 7, "method": "hello"}', "invalid_request", None),
        (b'{"v": 1, "kind": "request", "id": "c", "method": 5}', "invalid_request", "c"),
        (
            b'{"v": 1, "kind": "request", "id": "d", "method": "hello", "params": []}',
            "invalid_request",
            "d",
        ),
        (b'{"v": 1, "kind": "request", "id": "e", "method": "no.such"}', "unknown_method", "e"),
        (
            b'{"v": 1, "kind": "request", "id": "f", "method": "hello", "params": {}}',
            "invalid_params",
            "f",
        ),
        (
            b'{"v": 1, "kind": "request", "id": "g", "method": "session.attach",'
            b' "params": {"sessionId": "00000000-0000-0000-0000-000000000000"}}',
            "not_found",
            "g",
        ),
    ]
    for binary in (False, True):
        for frame, code, request_id in cases:
            before = len(client.frames)
            waiter = client.next_frame()
            client.send_raw(frame, binary=binary)
            reply = await waiter
            assert len(client.frames) == before + 1
            assert reply["ok"] is False, frame
            assert reply["error"]["code"] == code, (frame, reply)
            assert reply["id"] == request_id
            assert reply["error"]["message"]
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_unknown_params_keys_are_ignored(server):
    client = await RpcClient.connect(reactor, port_of(server), token=TOKEN)
    result = await client.call(
        "hello", {"type": "hello", "client": {"name": "t", "version": "1"}, "extra": [1, 2]}
    )
    assert result["connectionId"]
    await client.disconnect()


@pytest_twisted.ensureDeferred
async def test_frame_over_limit_closes_with_1009(start_server):
    service = start_server("--no-auth", "--max-frame-size", "65536")
    client = await RpcClient.connect(reactor, port_of(service))
    await hello(client)
    client.send_raw(b" " * 70000)
    was_clean, code, reason = await client.closed
    assert code == 1009
    again = await RpcClient.connect(reactor, port_of(service))
    assert "connectionId" in await hello(again)
    await again.disconnect()


@pytest_twisted.ensureDeferred
async def test_default_limit_is_16_mib(start_server):
    service = start_server("--no-auth")
    client = await RpcClient.connect(reactor, port_of(service))
    padding = "x" * (16 * 1024 * 1024 - 200)
    big_but_allowed = json.dumps(
        {
            "v": 1,
            "kind": "request",
            "id": "big",
            "method": "hello",
            "params": {"client": {"name": "t", "version": "1"}, "pad": padding},
        }
    ).encode()
    assert len(big_but_allowed) <= 16 * 1024 * 1024
    d = client.expect_reply("big")
    client.send_raw(big_but_allowed)
    assert (await d)["ok"] is True
    client.send_raw(b" " * (16 * 1024 * 1024 + 1))
    was_clean, code, reason = await client.closed
    assert code == 1009


@pytest_twisted.ensureDeferred
async def test_random_frames_each_answered_server_alive(start_server):
    service = start_server(
        "--no-auth", "--max-frame-size", "4096", "--requests-per-second", "100000"
    )
    rng = random.Random(1234)
    client = await RpcClient.connect(reactor, port_of(service))
    oversize = 0
    for i in range(500):
        size = rng.choice([0, 1, 5, 50, 500, 3000, 5000])
        frame = bytes(rng.getrandbits(8) for _ in range(size))
        if size > 4096:
            oversize += 1
            client.send_raw(frame, binary=bool(i % 2))
            was_clean, code, reason = await client.closed
            assert code == 1009
            client = await RpcClient.connect(reactor, port_of(service))
            continue
        before = len(client.frames)
        probe = f"probe-{i}"
        d = client.expect_reply(probe)
        client.send_raw(frame, binary=bool(i % 2))
        client.send_raw(
            json.dumps({"v": 1, "kind": "request", "id": probe, "method": "no.such"}).encode()
        )
        reply = await d
        assert reply["error"]["code"] == "unknown_method"
        # Exactly one reply for the random frame, then the probe's.
        assert len(client.frames) == before + 2, client.frames[before:]
        assert client.frames[before]["ok"] is False
    assert oversize > 0
    assert "connectionId" in await hello(client)
    await client.disconnect()
