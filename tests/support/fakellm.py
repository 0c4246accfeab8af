"""A scripted OpenAI-compatible streaming LLM server for tests.

pi's ``openai-completions`` provider POSTs ``/v1/chat/completions`` with ``"stream": true`` and
reads Server-Sent Events: ``data: {chat.completion.chunk}`` lines, then ``data: [DONE]``.
:class:`FakeLLM` answers each request with the next scripted reply, so tests drive the real
agent deterministically::

    llm = FakeLLM(reactor)
    yield llm.start()
    llm.script(Text("Hello world"), Reply(ToolCall("bash", {"command": "ls"})), HttpError(500))
    ...  # point pi's models.json at llm.base_url
    body = yield llm.wait_for_request(1)
    yield llm.stop()

A reply is a :class:`Reply` of parts streamed in order (:class:`Text`, :class:`Tokens`,
:class:`ToolCall`, optionally ending in :class:`Hang`), or one of those parts alone, or an
:class:`HttpError`. When the script is empty the server answers ``default_reply``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import attr
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

WAIT_TIMEOUT = 60.0
COMPLETED = "completed"
"""Outcome of an exchange whose reply was sent in full."""
CLIENT_DISCONNECTED = "client_disconnected"
"""Outcome of an exchange the client hung up on before the reply was complete."""
SERVER_STOPPED = "server_stopped"
"""Outcome of an exchange still open (streaming or hanging) when :meth:`FakeLLM.stop` ran."""


@attr.frozen
class Text:
    """Assistant text, streamed ``words_per_chunk`` words per chunk, ``delay`` s apart."""

    text: str
    words_per_chunk: int = 1
    delay: float = 0.0

    def deltas(self) -> list[str]:
        words = re.findall(r"\s*\S+\s*", self.text) or [self.text]
        return [
            "".join(words[start : start + self.words_per_chunk])
            for start in range(0, len(words), self.words_per_chunk)
        ]


@attr.frozen
class Tokens:
    """``count`` chunks of one token each (``"tok0 "``, ``"tok1 "``, ...), ``delay`` s apart."""

    count: int
    delay: float = 0.0

    def deltas(self) -> list[str]:
        return [f"tok{index} " for index in range(self.count)]

    @property
    def text(self) -> str:
        return "".join(self.deltas())


@attr.frozen
class ToolCall:
    """A function call; the id defaults to ``call_<request number>_<index in reply>``."""

    name: str
    arguments: dict = attr.field(factory=dict)
    id: str | None = None
    delay: float = 0.0


@attr.frozen
class Hang:
    """Stop streaming here and never finish; the connection stays open until the client
    disconnects or :meth:`FakeLLM.stop` runs. Alone, not even the response headers are sent."""


@attr.frozen
class HttpError:
    """A non-streaming error response with this status and body (JSON-encoded unless bytes)."""

    status: int
    body: object = None

    def encoded_body(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        body = self.body
        if body is None:
            body = {"error": {"message": f"fake error {self.status}", "type": "fake_error"}}
        return json.dumps(body).encode("utf-8")


@attr.frozen
class Reply:
    """One streamed answer: its parts in order; the finish reason is ``tool_calls`` when it
    holds a :class:`ToolCall`, else ``stop``, unless ``finish_reason`` says otherwise."""

    parts: tuple = attr.field(converter=tuple)
    finish_reason: str | None = None

    def __init__(self, *parts, finish_reason: str | None = None):
        self.__attrs_init__(parts, finish_reason)

    def __attrs_post_init__(self):
        for position, part in enumerate(self.parts):
            if not isinstance(part, Text | Tokens | ToolCall | Hang):
                raise TypeError(f"not a reply part: {part!r}")
            if isinstance(part, Hang) and position != len(self.parts) - 1:
                raise ValueError("Hang() can only be the last part of a reply")

    def effective_finish_reason(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        if any(isinstance(part, ToolCall) for part in self.parts):
            return "tool_calls"
        return "stop"


def as_reply(reply) -> Reply | HttpError:
    """Normalise what :meth:`FakeLLM.script` accepts: a Reply, an HttpError, a single part,
    or a list/tuple of parts."""
    if isinstance(reply, Reply | HttpError):
        return reply
    if isinstance(reply, list | tuple):
        return Reply(*reply)
    return Reply(reply)


@attr.frozen
class _Step:
    """One write of the stream, made ``delay`` seconds after the previous one."""

    delay: float
    data: bytes
    # The usage this step reports (the final chunk), as OpenAI-compatible providers send it.
    usage: dict | None = None


class _Exchange:
    """One request and the streaming of its reply."""

    def __init__(self, number: int, request, body: dict, reply, clock: IReactorTime):
        self.number = number
        self.request = request
        self.body = body
        self.reply = reply
        self.clock = clock
        self.outcome: str | None = None
        # The usage chunk once it was sent: what pi was told this request used.
        self.usage: dict | None = None
        self._end_waiters: list[defer.Deferred] = []
        self._pending_call = None
        self._stopping = False
        self._headers_sent = False
        request.notifyFinish().addErrback(self._client_gone)

    def run(self) -> None:
        if isinstance(self.reply, HttpError):
            self.request.setResponseCode(self.reply.status)
            self.request.setHeader(b"content-type", b"application/json")
            self.request.write(self.reply.encoded_body())
            self._finish()
            return
        self._steps = iter(self._stream_steps())
        self._advance()

    def _stream_steps(self) -> Iterator[_Step]:
        model = self.body.get("model", "fake")
        completion_id = f"chatcmpl-fake-{self.number}"

        def chunk(delay: float, delta: dict, finish_reason=None, usage=None) -> _Step:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": []
                if usage
                else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            if usage:
                payload["usage"] = usage
            return _Step(
                delay, b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n", usage=usage
            )

        if self.reply.parts and isinstance(self.reply.parts[0], Hang):
            return
        yield chunk(0.0, {"role": "assistant", "content": ""})
        completion_tokens = 0
        tool_index = 0
        for part in self.reply.parts:
            if isinstance(part, Hang):
                return
            if isinstance(part, ToolCall):
                call_id = part.id or f"call_{self.number}_{tool_index}"
                call = {
                    "index": tool_index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": part.name, "arguments": ""},
                }
                yield chunk(part.delay, {"tool_calls": [call]})
                arguments = json.dumps(part.arguments)
                yield chunk(
                    part.delay,
                    {"tool_calls": [{"index": tool_index, "function": {"arguments": arguments}}]},
                )
                tool_index += 1
                completion_tokens += 1
                continue
            for position, delta in enumerate(part.deltas()):
                yield chunk(part.delay if position else 0.0, {"content": delta})
                completion_tokens += 1
        yield chunk(0.0, {}, finish_reason=self.reply.effective_finish_reason())
        prompt_tokens = len(json.dumps(self.body.get("messages", []))) // 4
        yield chunk(
            0.0,
            {},
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        )
        yield _Step(0.0, b"data: [DONE]\n\n")

    def _advance(self) -> None:
        """Write every step due now; schedule the next delayed one, or finish."""
        self._pending_call = None
        if self.outcome is not None:
            return
        for step in self._steps:
            if step.delay > 0:
                self._pending_call = self.clock.callLater(
                    step.delay, self._write_then_advance, step
                )
                return
            self._write(step)
        if self._hanging():
            return
        self._finish()

    def _write_then_advance(self, step: _Step) -> None:
        self._pending_call = None
        self._write(step)
        self._advance()

    def _write(self, step: _Step) -> None:
        if not self._headers_sent:
            self._headers_sent = True
            self.request.setHeader(b"content-type", b"text/event-stream")
            self.request.setHeader(b"cache-control", b"no-cache")
        self.request.write(step.data)
        if step.usage is not None:
            self.usage = step.usage

    def _hanging(self) -> bool:
        return bool(self.reply.parts) and isinstance(self.reply.parts[-1], Hang)

    def _finish(self) -> None:
        self.request.finish()
        self._end(COMPLETED)

    def _client_gone(self, reason) -> None:
        self._cancel_pending()
        self._end(SERVER_STOPPED if self._stopping else CLIENT_DISCONNECTED)

    def abandon(self) -> None:
        """Give up on this exchange because the server is stopping (which then closes its
        connection)."""
        self._stopping = True
        self._cancel_pending()
        self._end(SERVER_STOPPED)

    def when_ended(self) -> defer.Deferred:
        if self.outcome is not None:
            return defer.succeed(self.outcome)
        waiter = defer.Deferred()
        self._end_waiters.append(waiter)
        return waiter

    def _cancel_pending(self) -> None:
        if self._pending_call is not None and self._pending_call.active():
            self._pending_call.cancel()
        self._pending_call = None

    def _end(self, outcome: str) -> None:
        if self.outcome is None:
            self.outcome = outcome
            waiting, self._end_waiters = self._end_waiters, []
            for waiter in waiting:
                waiter.callback(outcome)


class _ChatCompletions(Resource):
    isLeaf = True

    def __init__(self, llm: FakeLLM):
        super().__init__()
        self._llm = llm

    def render_POST(self, request):
        try:
            body = json.loads(request.content.read())
        except ValueError:
            request.setResponseCode(400)
            return b'{"error": {"message": "request body is not JSON"}}'
        self._llm._accept(request, body)
        return NOT_DONE_YET


class _ConnectionTrackingFactory(WrappingFactory):
    """Knows the open connections so that stopping the server can close them and wait."""

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self._all_closed: list[defer.Deferred] = []

    def unregisterProtocol(self, protocol):
        super().unregisterProtocol(protocol)
        if not self.protocols:
            waiting, self._all_closed = self._all_closed, []
            for waiter in waiting:
                waiter.callback(None)

    def close_all(self) -> defer.Deferred:
        if not self.protocols:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._all_closed.append(waiter)
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()
        return waiter


class FakeLLM:
    """The scripted server. ``reactor`` provides time (delays) and, for :meth:`start`, TCP.

    For in-memory tests pass a :class:`~twisted.internet.task.Clock`, skip :meth:`start` and
    serve :attr:`resource` with ``treq.testing.StubTreq``.
    """

    def __init__(self, reactor, default_reply=Text("OK")):
        self._reactor = reactor
        self.default_reply = as_reply(default_reply)
        self._script: list = []
        self.requests: list[dict] = []
        """Every request body received, parsed, in arrival order."""
        self._exchanges: list[_Exchange] = []
        self._request_waiters: dict[int, list[defer.Deferred]] = {}
        root = Resource()
        v1 = Resource()
        chat = Resource()
        root.putChild(b"v1", v1)
        v1.putChild(b"chat", chat)
        chat.putChild(b"completions", _ChatCompletions(self))
        self.resource = root
        """The root resource: ``/v1/chat/completions``."""
        self._factory = _ConnectionTrackingFactory(Site(root))
        self._port = None

    def start(self) -> defer.Deferred:
        """Listen on 127.0.0.1, a free port; fires with None once :attr:`base_url` is set."""
        self._port = self._reactor.listenTCP(0, self._factory, interface="127.0.0.1")
        return defer.succeed(None)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the ``baseUrl`` for pi's models.json."""
        if self._port is None:
            raise RuntimeError("FakeLLM.start() has not been called")
        return f"http://127.0.0.1:{self._port.getHost().port}/v1"

    @defer.inlineCallbacks
    def stop(self):
        """Stop listening, end open exchanges (outcome ``server_stopped``), cancel their timers
        and close every connection; fires once all connections are closed."""
        for exchange in self._exchanges:
            exchange.abandon()
        if self._port is not None:
            port, self._port = self._port, None
            yield port.stopListening()
        yield self._factory.close_all()

    def script(self, *replies) -> None:
        """Queue replies, one per coming request (see :func:`as_reply` for the forms)."""
        self._script.extend(as_reply(reply) for reply in replies)

    @property
    def unused_replies(self) -> int:
        """How many scripted replies no request has consumed yet."""
        return len(self._script)

    def drop_unused(self) -> int:
        """Forget the scripted replies no request took; returns how many there were."""
        dropped, self._script = len(self._script), []
        return dropped

    def reported_usage(self) -> list[tuple[str, dict]]:
        """``(model, usage)`` of every reply whose final usage chunk was sent, in order."""
        return [
            (exchange.body.get("model"), exchange.usage)
            for exchange in self._exchanges
            if exchange.usage is not None
        ]

    def wait_for_request(self, n: int) -> defer.Deferred:
        """Fires with the body of the ``n``-th request (1-based) once it has arrived."""
        if n < 1:
            raise ValueError("requests are numbered from 1")
        if len(self.requests) >= n:
            return defer.succeed(self.requests[n - 1])
        waiter = defer.Deferred()
        self._request_waiters.setdefault(n, []).append(waiter)
        # A safety net against a hung test, not a synchronisation delay.
        return waiter.addTimeout(WAIT_TIMEOUT, self._reactor)

    def wait_for_end(self, n: int) -> defer.Deferred:
        """Fires with the outcome of the ``n``-th request's reply once it is over:
        ``completed``, ``client_disconnected`` or ``server_stopped``."""

        return self.wait_for_request(n).addCallback(lambda _: self._exchanges[n - 1].when_ended())

    def _accept(self, request, body: dict) -> None:
        self.requests.append(body)
        number = len(self.requests)
        reply = self._script.pop(0) if self._script else self.default_reply
        exchange = _Exchange(number, request, body, reply, self._reactor)
        self._exchanges.append(exchange)
        for waiter in self._request_waiters.pop(number, []):
            waiter.callback(body)
        exchange.run()
