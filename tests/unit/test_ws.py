"""
The /rpc protocol with in-memory transports (autobahn.twisted.testing): dispatch,
concurrency, internal errors and authentication, without sockets.
"""

import json

import pytest
import pytest_twisted
from autobahn.twisted.testing import MemoryReactorClockResolver, create_memory_agent, create_pumper
from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from piserver.api.methods import RpcMethods
from piserver.ops.metrics import ServerMetrics
from piserver.security.auth import Authenticator, Unauthorized
from piserver.security.refusals import Refusals
from piserver.security.scopes import Grant, Scope
from piserver.security.tokens import DeviceToken
from piserver.wire.hub import Hub
from piserver.wire.websocket import RpcServerFactory


class Recorder(WebSocketClientProtocol):
    def __init__(self):
        super().__init__()
        self.received = []

    def onMessage(self, payload, isBinary):
        self.received.append(json.loads(payload))


def request(method, request_id, params=None):
    frame = {"v": 1, "kind": "request", "id": request_id, "method": method}
    if params is not None:
        frame["params"] = params
    return json.dumps(frame).encode()


class Harness:
    def __init__(self, methods, token=None):
        self.reactor = MemoryReactorClockResolver()
        self.pumper = create_pumper()
        self.hub = Hub(methods)
        self.factory = RpcServerFactory(
            self.hub,
            Authenticator(token),
            1024 * 1024,
            reactor=self.reactor,
            refusals=Refusals(ServerMetrics(self.reactor), self.reactor),
        )
        self.agent = create_memory_agent(
            self.reactor, self.pumper, lambda: self.factory.buildProtocol(None)
        )
        self.pumper.start()

    def open(self, headers=None, url="ws://localhost:3141/rpc"):
        d = self.agent.open(url, {"headers": headers or {}}, protocol_class=Recorder)
        self.pumper._flush()
        return d

    def flush(self):
        self.pumper._flush()

    def stop(self):
        self.pumper.stop()


@pytest.fixture
def pending():
    return {}


@pytest.fixture
def harness(pending):
    methods = RpcMethods().table()

    def slow(connection, req):
        d = pending["slow"] = Deferred()
        return d

    def quick(connection, req):
        return {"quick": True}

    def boom(connection, req):
        raise RuntimeError("secret internals")

    def wrong_type(connection, req):
        return ["not", "an", "object"]

    methods.update(slow=slow, quick=quick, boom=boom, wrong_type=wrong_type)
    h = Harness(methods)
    yield h
    h.stop()


@pytest_twisted.ensureDeferred
async def test_hello(harness):
    client = await harness.open()
    client.sendMessage(
        request("hello", "1", {"client": {"name": "ios", "version": "2"}}), isBinary=True
    )
    harness.flush()
    (reply,) = client.received
    assert reply["ok"] is True and reply["id"] == "1"
    assert reply["result"]["connectionId"] in harness.hub.connections
    assert reply["result"]["server"]["name"] == "pi-server"


@pytest.mark.parametrize(
    "params, fragment",
    [
        (None, "client"),
        ({"client": "x"}, "client"),
        ({"client": {"version": "1"}}, "client.name"),
        ({"client": {"name": "n", "version": 3}}, "client.version"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_hello_needs_client(harness, params, fragment):
    client = await harness.open()
    client.sendMessage(request("hello", "1", params))
    harness.flush()
    (reply,) = client.received
    assert reply["error"]["code"] == "invalid_params"
    assert fragment in reply["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_slow_call_does_not_delay_quick_one(harness, pending):
    client = await harness.open()
    client.sendMessage(request("slow", "s"))
    client.sendMessage(request("quick", "q"))
    harness.flush()
    assert [r["id"] for r in client.received] == ["q"]
    pending["slow"].callback({"slow": True})
    harness.flush()
    assert [r["id"] for r in client.received] == ["q", "s"]
    assert client.received[1]["result"] == {"slow": True}


@pytest_twisted.ensureDeferred
async def test_unexpected_exception_is_logged_and_answered(harness):
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        client = await harness.open()
        client.sendMessage(request("boom", "b"))
        client.sendMessage(request("wrong_type", "w"))
        client.sendMessage(request("quick", "q"))
        harness.flush()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    boom, wrong, quick = client.received
    assert boom["error"]["code"] == "internal_error"
    assert "secret internals" not in boom["error"]["message"]
    assert wrong["error"]["code"] == "internal_error"
    assert quick["ok"] is True  # the connection survived
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert any(e["log_failure"].check(RuntimeError) for e in failures)


@pytest_twisted.ensureDeferred
async def test_result_none_becomes_empty_object(harness, pending):
    client = await harness.open()
    client.sendMessage(request("slow", "s"))
    harness.flush()
    pending["slow"].callback(None)
    harness.flush()
    assert client.received[0]["result"] == {}


@pytest_twisted.ensureDeferred
async def test_authenticated_upgrade_by_header_and_query():
    h = Harness(RpcMethods().table(), token="sesame")
    try:
        for headers, url in [
            ({"Authorization": "Bearer sesame"}, "ws://localhost:3141/rpc"),
            ({}, "ws://localhost:3141/rpc?token=sesame"),
        ]:
            client = await h.open(headers=headers, url=url)
            client.sendMessage(request("hello", "1", {"client": {"name": "n", "version": "1"}}))
            h.flush()
            assert client.received[0]["ok"] is True
    finally:
        h.stop()


@pytest.mark.parametrize(
    "headers, query, expected",
    [
        ({"authorization": "Bearer sesame"}, {}, None),
        ({"authorization": "bearer  sesame "}, {}, None),
        ({}, {"token": ["sesame"]}, None),
        ({"authorization": "Bearer wrong"}, {"token": ["sesame"]}, "invalid token"),
        ({}, {}, "missing token"),
        ({"authorization": "Basic c2VzYW1l"}, {}, "missing token"),
        ({}, {"token": [""]}, "missing token"),
        ({}, {"token": ["sesam"]}, "invalid token"),
    ],
)
def test_authenticator(headers, query, expected):
    authenticator = Authenticator("sesame")
    if expected is None:
        assert authenticator.authenticate(headers, query).device is None
    else:
        with pytest.raises(Unauthorized, match=expected):
            authenticator.authenticate(headers, query)


def test_authenticator_off_and_device_tokens():
    assert Authenticator(None).authenticate({}, {}).device is None

    watcher = Grant(device="phone", scopes=frozenset({Scope.READ}))

    class Devices:
        def find(self, token):
            return DeviceToken("phone", "sha256:1", watcher) if token == "device-secret" else None

    authenticator = Authenticator("sesame", Devices())
    identity = authenticator.authenticate({}, {"token": ["device-secret"]})
    assert (identity.device, identity.token_id, identity.grant) == ("phone", "sha256:1", watcher)
    assert Authenticator("sesame").authenticate({}, {"token": ["sesame"]}).grant.server
    with pytest.raises(Unauthorized):
        authenticator.authenticate({}, {"token": ["other"]})


@pytest.mark.parametrize("size", [2, 125, 126, 65535, 65536, 300_000])
@pytest_twisted.ensureDeferred
async def test_frames_written_directly_arrive_whole(harness, size):
    # Each length form of a frame's head (7, 16 and 64 bits), at its edges: Autobahn's
    # client checks every frame it reads.
    client = await harness.open()
    (connection,) = harness.hub.connections.values()
    text = "x" * (size - 2)
    connection.send(json.dumps(text).encode())
    connection.send(b'{"after":true}')
    harness.flush()
    assert client.received == [text, {"after": True}]
