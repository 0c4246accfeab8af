"""
The scripted LLM of ``tests.support.fakellm`` in a process of its own, for the
benchmarks: ``python -m bench.llm``.

It writes ``{"baseUrl": URL}`` on stdout once listening. Each line
``{"tokens": N, "delay": S}`` on stdin queues one reply ``Tokens(N, delay=S)``
and is acknowledged with ``{"queued": COUNT}``. It stops when stdin closes.

Paced answers are paced by this process's timers: in the bench process they
would run late whenever a client there is busy decoding, and the answer would
take longer for reasons that have nothing to do with the relay.
"""

import json

from twisted.internet import defer, protocol, stdio, task

from tests.support.fakellm import FakeLLM, Tokens


class _Control(protocol.Protocol):
    def __init__(self, llm: FakeLLM, closed: defer.Deferred):
        self._llm = llm
        self._closed = closed
        self._buffer = b""
        self._queued = 0

    def dataReceived(self, data: bytes):
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            reply = json.loads(line)
            self._llm.script(Tokens(reply["tokens"], delay=reply["delay"]))
            self._queued += 1
            self.transport.write(json.dumps({"queued": self._queued}).encode() + b"\n")

    def connectionLost(self, reason=None):
        if not self._closed.called:
            self._closed.callback(None)


async def serve(reactor) -> None:
    llm = FakeLLM(reactor)
    await llm.start()
    closed = defer.Deferred()
    control = stdio.StandardIO(_Control(llm, closed), reactor=reactor)
    control.write(json.dumps({"baseUrl": llm.base_url}).encode() + b"\n")
    await closed
    await llm.stop()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(serve(reactor)))
