"""The scripted LLM: over real loopback HTTP (treq) for the wire format, and with a fake
clock and in-memory requests for timing, disconnects and stopping."""

import io
import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from tests.support.fakellm import (
    CLIENT_DISCONNECTED,
    COMPLETED,
    SERVER_STOPPED,
    FakeLLM,
    Hang,
    HttpError,
    Reply,
    Text,
    Tokens,
    ToolCall,
)

REQUEST_BODY = {
    "model": "fake-1",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "tools": [{"type": "function", "function": {"name": "bash", "parameters": {}}}],
}


def sse_payloads(raw: bytes) -> list:
    """The ``data:`` payloads of an SSE body, JSON-decoded except the final ``[DONE]``."""
    payloads = []
    for event in raw.decode("utf-8").split("\n\n"):
        if not event:
            continue
        assert event.startswith("data: "), event
        data = event[len("data: ") :]
        payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def choices(payloads: list) -> list[dict]:
    """The first choice of every chunk that has one."""
    return [
        chunk["choices"][0] for chunk in payloads if isinstance(chunk, dict) and chunk["choices"]
    ]


def content_deltas(payloads: list) -> list[str]:
    return [
        choice["delta"]["content"] for choice in choices(payloads) if choice["delta"].get("content")
    ]


def finish_reasons(payloads: list) -> list[str]:
    return [choice["finish_reason"] for choice in choices(payloads) if choice["finish_reason"]]


@pytest.fixture
def pool():
    from twisted.internet import reactor

    return HTTPConnectionPool(reactor, persistent=False)


@defer.inlineCallbacks
def post(llm, pool, body=REQUEST_BODY):
    response = yield treq.post(
        llm.base_url + "/chat/completions",
        json.dumps(body).encode("utf-8"),
        headers={"Content-Type": ["application/json"]},
        pool=pool,
    )
    content = yield response.content()
    return response, content


@pytest_twisted.inlineCallbacks
def test_text_streams_word_by_word_then_done(fake_llm, pool):
    fake_llm.script(Text("Hello big world"))

    response, content = yield post(fake_llm, pool)

    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    payloads = sse_payloads(content)
    assert payloads[-1] == "[DONE]"
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content_deltas(payloads) == ["Hello ", "big ", "world"]
    assert finish_reasons(payloads) == ["stop"]
    assert {chunk["model"] for chunk in payloads[:-1]} == {"fake-1"}
    assert {chunk["object"] for chunk in payloads[:-1]} == {"chat.completion.chunk"}
    assert payloads[-2]["usage"]["completion_tokens"] == 3
    assert (yield fake_llm.wait_for_end(1)) == COMPLETED


@pytest_twisted.inlineCallbacks
def test_words_per_chunk_groups_words(fake_llm, pool):
    fake_llm.script(Text("one two three four five", words_per_chunk=2))

    _, content = yield post(fake_llm, pool)

    assert content_deltas(sse_payloads(content)) == ["one two ", "three four ", "five"]


@pytest_twisted.inlineCallbacks
def test_tokens_streams_count_chunks(fake_llm, pool):
    fake_llm.script(Tokens(5))

    _, content = yield post(fake_llm, pool)

    payloads = sse_payloads(content)
    assert content_deltas(payloads) == ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 "]
    assert "".join(content_deltas(payloads)) == Tokens(5).text
    assert payloads[-2]["usage"]["completion_tokens"] == 5


@pytest_twisted.inlineCallbacks
def test_tool_calls_in_one_reply(fake_llm, pool):
    fake_llm.script(
        Reply(
            Text("Looking."),
            ToolCall("bash", {"command": "ls"}),
            ToolCall("read", {"path": "a.txt"}, id="mine"),
        )
    )

    _, content = yield post(fake_llm, pool)

    payloads = sse_payloads(content)
    calls = {}
    for choice in choices(payloads):
        for call in choice["delta"].get("tool_calls", []):
            entry = calls.setdefault(call["index"], {"arguments": ""})
            if "id" in call:
                entry.update(id=call["id"], type=call["type"], name=call["function"]["name"])
            entry["arguments"] += call["function"]["arguments"]
    assert calls == {
        0: {"id": "call_1_0", "type": "function", "name": "bash", "arguments": '{"command": "ls"}'},
        1: {"id": "mine", "type": "function", "name": "read", "arguments": '{"path": "a.txt"}'},
    }
    assert content_deltas(payloads) == ["Looking."]
    assert finish_reasons(payloads) == ["tool_calls"]


@pytest_twisted.inlineCallbacks
def test_http_error_answers_status_and_json_body(fake_llm, pool):
    fake_llm.script(HttpError(503, {"error": {"message": "overloaded"}}), HttpError(500))

    first, first_body = yield post(fake_llm, pool)
    second, second_body = yield post(fake_llm, pool)

    assert (first.code, json.loads(first_body)) == (503, {"error": {"message": "overloaded"}})
    assert second.code == 500
    assert json.loads(second_body)["error"]["message"] == "fake error 500"
    assert (yield fake_llm.wait_for_end(2)) == COMPLETED


@pytest_twisted.inlineCallbacks
def test_replies_in_script_order_then_the_default(fake_llm, pool):
    fake_llm.script(Text("first"), [Text("second")])
    assert fake_llm.unused_replies == 2

    bodies = []
    for _ in range(3):
        _, content = yield post(fake_llm, pool)
        bodies.append("".join(content_deltas(sse_payloads(content))))

    assert bodies == ["first", "second", "OK"]
    assert fake_llm.unused_replies == 0


@pytest_twisted.inlineCallbacks
def test_default_reply_is_configurable(pool):
    from twisted.internet import reactor

    llm = FakeLLM(reactor, default_reply=HttpError(418))
    yield llm.start()
    try:
        response, _ = yield post(llm, pool)
    finally:
        yield llm.stop()
    assert response.code == 418


@pytest_twisted.inlineCallbacks
def test_records_request_bodies_and_waits_for_the_nth(fake_llm, pool):
    second = fake_llm.wait_for_request(2)
    assert not second.called

    yield post(fake_llm, pool)
    assert not second.called
    yield post(fake_llm, pool, {**REQUEST_BODY, "model": "fake-2"})

    assert (yield second)["model"] == "fake-2"
    assert (yield fake_llm.wait_for_request(1)) == REQUEST_BODY
    assert [body["model"] for body in fake_llm.requests] == ["fake-1", "fake-2"]
    assert fake_llm.requests[0]["tools"][0]["function"]["name"] == "bash"


@pytest_twisted.inlineCallbacks
def test_non_json_request_is_refused_and_not_recorded(fake_llm, pool):
    response = yield treq.post(fake_llm.base_url + "/chat/completions", b"{oops", pool=pool)

    assert response.code == 400
    yield response.content()
    assert fake_llm.requests == []


@pytest_twisted.inlineCallbacks
def test_client_hanging_up_mid_stream_is_recorded(fake_llm, pool):
    fake_llm.script(Tokens(1000, delay=0.05))
    response = yield treq.post(
        fake_llm.base_url + "/chat/completions", json.dumps(REQUEST_BODY).encode(), pool=pool
    )

    def hang_up(data):
        raise RuntimeError("enough")  # treq.collect aborts the connection

    with pytest.raises(RuntimeError):
        yield treq.collect(response, hang_up)

    assert (yield fake_llm.wait_for_end(1)) == CLIENT_DISCONNECTED


@pytest_twisted.inlineCallbacks
def test_stop_ends_a_hanging_request_and_closes_its_connection(pool):
    from twisted.internet import reactor

    llm = FakeLLM(reactor)
    yield llm.start()
    llm.script(Hang())
    answer = treq.post(
        llm.base_url + "/chat/completions", json.dumps(REQUEST_BODY).encode(), pool=pool
    )
    yield llm.wait_for_request(1)

    yield llm.stop()

    assert (yield llm.wait_for_end(1)) == SERVER_STOPPED
    with pytest.raises(Exception):  # noqa: B017 - any connection failure will do
        yield answer
    assert llm._factory.protocols == {}


def render(llm, body=REQUEST_BODY) -> DummyRequest:
    """Send one request to ``llm.resource`` in memory."""
    request = DummyRequest([b"v1", b"chat", b"completions"])
    request.method = b"POST"
    request.content = io.BytesIO(json.dumps(body).encode("utf-8"))
    resource = getChildForRequest(llm.resource, request)
    assert resource.render(request) is NOT_DONE_YET
    return request


def test_slow_tokens_follow_the_clock():
    clock = task.Clock()
    llm = FakeLLM(clock)
    llm.script(Tokens(3, delay=0.5))

    request = render(llm)
    # role chunk and first token at once, then one token per delay
    assert len(request.written) == 2
    clock.advance(0.5)
    assert len(request.written) == 3
    assert not request.finished
    clock.advance(0.5)

    assert request.finished
    assert content_deltas(sse_payloads(b"".join(request.written))) == ["tok0 ", "tok1 ", "tok2 "]
    assert clock.getDelayedCalls() == []
    assert llm.wait_for_end(1).result == COMPLETED


def test_text_delay_applies_between_chunks():
    clock = task.Clock()
    llm = FakeLLM(clock)
    llm.script(Reply(Text("a b", delay=1.0), ToolCall("bash", {}, delay=2.0)))

    request = render(llm)
    clock.advance(0.999)
    assert content_deltas(sse_payloads(b"".join(request.written))) == ["a "]
    clock.advance(0.001)
    assert content_deltas(sse_payloads(b"".join(request.written))) == ["a ", "b"]
    clock.advance(2.0)
    assert not request.finished  # the tool call's arguments come one delay later
    clock.advance(2.0)
    assert request.finished


def test_client_disconnect_cancels_pending_timers():
    clock = task.Clock()
    llm = FakeLLM(clock)
    llm.script(Tokens(10, delay=1.0))
    request = render(llm)
    assert clock.getDelayedCalls() != []

    request.processingFailed(Failure(ConnectionDone()))

    assert clock.getDelayedCalls() == []
    assert llm.wait_for_end(1).result == CLIENT_DISCONNECTED
    written = len(request.written)
    clock.advance(100)
    assert len(request.written) == written


def test_text_then_hang_streams_the_text_and_never_finishes():
    clock = task.Clock()
    llm = FakeLLM(clock)
    llm.script(Reply(Text("partial answer"), Hang()))

    request = render(llm)
    outcome = []
    llm.wait_for_end(1).addCallback(outcome.append)
    clock.advance(1000)

    assert content_deltas(sse_payloads(b"".join(request.written))) == ["partial ", "answer"]
    assert not request.finished
    assert outcome == []


def test_bare_hang_sends_nothing_at_all():
    llm = FakeLLM(task.Clock())
    llm.script(Hang())

    request = render(llm)

    assert request.written == []
    assert request.responseHeaders.getRawHeaders(b"content-type") is None


def test_stop_cancels_timers_of_a_streaming_reply():
    clock = task.Clock()
    llm = FakeLLM(clock)
    llm.script(Tokens(10, delay=1.0))
    request = render(llm)

    stopped = llm.stop()

    assert stopped.called
    assert clock.getDelayedCalls() == []
    assert llm.wait_for_end(1).result == SERVER_STOPPED
    assert not request.finished


def test_hang_must_be_last():
    with pytest.raises(ValueError):
        Reply(Hang(), Text("never"))


def test_reply_refuses_unknown_parts():
    with pytest.raises(TypeError):
        Reply("just a string")


def test_finish_reason_can_be_forced():
    clock = task.Clock()
    llm = FakeLLM(clock)
    llm.script(Reply(Text("cut"), finish_reason="length"))

    request = render(llm)

    assert finish_reasons(sse_payloads(b"".join(request.written))) == ["length"]


def test_base_url_needs_start():
    with pytest.raises(RuntimeError):
        _ = FakeLLM(task.Clock()).base_url


def test_requests_are_numbered_from_one():
    with pytest.raises(ValueError):
        FakeLLM(task.Clock()).wait_for_request(0)


@pytest_twisted.inlineCallbacks
def test_stop_mid_stream_leaves_no_timer_or_connection(pool):
    from twisted.internet import reactor

    llm = FakeLLM(reactor)
    yield llm.start()
    llm.script(Tokens(1000, delay=0.05))
    response = yield treq.post(
        llm.base_url + "/chat/completions", json.dumps(REQUEST_BODY).encode(), pool=pool
    )
    body = treq.content(response)

    yield llm.stop()

    assert (yield llm.wait_for_end(1)) == SERVER_STOPPED
    with pytest.raises(Exception):  # noqa: B017 - the body is cut short
        yield body
    ours = [
        call
        for call in reactor.getDelayedCalls()
        if getattr(call.func, "__self__", None) in llm._exchanges
    ]
    assert ours == []
    assert llm._factory.protocols == {}
