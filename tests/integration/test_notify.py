"""--notify-url against receivers on loopback: input_needed for a pending native tool call,
run_finished after the run, signed; a receiver that never answers holds nothing up."""

import hashlib
import hmac
import json

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.web.resource import Resource
from twisted.web.server import Site

from piserver.ops.notify import SIGNATURE_HEADER
from tests.support.fakellm import Reply, Text, ToolCall
from tests.support.wsclient import is_type

SECRET = "notify-integration-secret"
LOCATION = {
    "name": "get_location",
    "description": "Where the device is",
    "parameters": {"type": "object", "properties": {}},
}
WAIT_TIMEOUT = 30.0


class Receiver(Resource):
    """Collects the POSTs; ``wait_for(event)`` fires with the first of that kind."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.received = []
        self._waiters = []

    def render_POST(self, request):
        body = request.content.read()
        self.received.append((body, request.getHeader(SIGNATURE_HEADER)))
        for waiter in list(self._waiters):
            event, d = waiter
            if json.loads(body)["event"] == event:
                self._waiters.remove(waiter)
                d.callback((json.loads(body), body, request.getHeader(SIGNATURE_HEADER)))
        return b"ok"

    def wait_for(self, event) -> Deferred:
        for body, signature in self.received:
            if json.loads(body)["event"] == event:
                d = Deferred()
                d.callback((json.loads(body), body, signature))
                return d
        d = Deferred()
        self._waiters.append((event, d))
        return d.addTimeout(WAIT_TIMEOUT, reactor)


class Silent(Protocol):
    """Reads the request and never answers."""

    def connectionMade(self):
        self.factory.connections.append(self)

    def dataReceived(self, data):
        # Each read, as it came: a request's head and body may come apart.
        self.factory.requests.append(data)
        waiters, self.factory.waiters = self.factory.waiters, []
        for d in waiters:
            d.callback(data)


@pytest_twisted.async_yield_fixture
async def receiver():
    resource = Receiver()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}/hook"
    yield resource
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def silent_receiver():
    factory = Factory.forProtocol(Silent)
    factory.requests, factory.waiters, factory.connections = [], [], []
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.url = f"http://127.0.0.1:{port.getHost().port}/hook"
    yield factory
    await port.stopListening()
    for protocol in factory.connections:
        protocol.transport.abortConnection()


def valid(body: bytes, signature: str) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature or "")


@pytest_twisted.ensureDeferred
async def test_input_needed_then_run_finished(make_pi_server, fake_llm, receiver):
    server = make_pi_server("--notify-url", receiver.url, "--notify-secret", SECRET)
    fake_llm.script(Reply(ToolCall("get_location", {})), Text("You are at home."))
    phone = await server.client(nativeTools=[LOCATION])
    session_id = (await phone.call("session.create", {"mode": "chat"}))["sessionId"]
    await phone.call("prompt", {"message": "where am I?"}, session_id=session_id)
    call = await phone.wait_for_event(is_type("native_tool_request", session_id))

    # The call is pending: nobody has answered it yet.
    needed, body, signature = await receiver.wait_for("input_needed")
    assert needed["sessionId"] == session_id and needed["name"] == "where am I?"
    assert "get_location" in needed["summary"]
    assert valid(body, signature)
    assert not [b for b, _ in receiver.received if json.loads(b)["event"] == "run_finished"]

    await phone.call(
        "native_tool_response",
        {"callId": call["payload"]["callId"], "result": {"place": "home"}},
        session_id=session_id,
    )
    await phone.wait_for_event(is_type("agent_settled", session_id))
    finished, body, signature = await receiver.wait_for("run_finished")
    assert finished["sessionId"] == session_id
    assert finished["summary"] == "You are at home."
    assert valid(body, signature)
    assert SECRET.encode() not in body


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_never_answers_holds_nothing_up(
    make_pi_server, fake_llm, silent_receiver
):
    server = make_pi_server("--notify-url", silent_receiver.url)
    fake_llm.script(Reply(ToolCall("get_location", {})), Text("Done."), Text("Again."))
    phone = await server.client(nativeTools=[LOCATION])
    session_id = (await phone.call("session.create", {"mode": "chat"}))["sessionId"]
    await phone.call("prompt", {"message": "where am I?"}, session_id=session_id)
    call = await phone.wait_for_event(is_type("native_tool_request", session_id))
    if not silent_receiver.requests:
        waiting = Deferred()
        silent_receiver.waiters.append(waiting)
        await waiting.addTimeout(WAIT_TIMEOUT, reactor)
    # The input_needed POST is unanswered: the run goes on regardless.
    await phone.call(
        "native_tool_response",
        {"callId": call["payload"]["callId"], "result": {}},
        session_id=session_id,
    )
    first = await phone.wait_for_event(is_type("agent_settled", session_id))
    await phone.call("prompt", {"message": "again"}, session_id=session_id)
    await phone.wait_for_event(
        lambda f: is_type("agent_settled", session_id)(f) and f["seq"] > first["seq"]
    )
    # Still the one POST, unanswered: the others wait behind it, not the runs. (Counted in
    # the bytes: its head and body may come in reads of their own.)
    assert b"".join(silent_receiver.requests).count(b"POST ") == 1
    assert len(silent_receiver.connections) == 1
