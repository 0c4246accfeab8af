"""
A lean WebSocket client for the relay benchmarks: a hundred of them must cost
the bench process less than the server they measure.

It does the opening handshake itself, splits frames without copying event
payloads, reads only each event's ``seq`` (a regular expression over the
envelope's head, which ``envelope.encode_event`` writes first) and, unless
told to decode events like a real client would, parses nothing but responses.
No permessage-deflate: the byte benchmarks use the full client of
``tests.support.wsclient``.
"""

import base64
import itertools
import json
import os
import re
import time
from urllib.parse import urlencode

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint

_HEAD = re.compile(rb'"seq":(\d+),"type":"([^"]*)"')
_EVENT_HEAD = b'{"v":1,"kind":"event"'
_TEXT, _CONTINUATION, _CLOSE, _PING = 0x1, 0x0, 0x8, 0x9
_PONG = 0xA


class HandshakeRefused(Exception):
    pass


class CallFailed(Exception):
    pass


class LeanClient(protocol.Protocol):
    """One connection. ``call`` sends a request; ``until_seq`` and ``until_type`` wait
    for an event. ``decode``: parse every event's JSON (and drop it)."""

    def __init__(self, host: str, port: int, token: str, decode: bool = False):
        self._request = (
            f"GET /rpc?{urlencode({'token': token})} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.upgraded = defer.Deferred()
        self.decode = decode
        self.wire_bytes = 0
        self.event_frames = 0
        self.event_bytes = 0
        self.last_seq = 0
        self._buffer = bytearray()
        self._open = False
        self._fragments: list[bytes] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[str, defer.Deferred] = {}
        self._seq_waiter: tuple[int, defer.Deferred] | None = None
        self._type_waiter: tuple[bytes, defer.Deferred] | None = None
        self.lost = defer.Deferred()
        self.close_code: int | None = None

    # -- requests -----------------------------------------------------------

    def call(self, method: str, params: dict | None = None, session_id: str | None = None):
        """Fire with the response's result, or fail with CallFailed."""
        request_id = f"b{next(self._ids)}"
        envelope = {
            "v": 1,
            "kind": "request",
            "id": request_id,
            "method": method,
            "params": params or {},
        }
        if session_id is not None:
            envelope["sessionId"] = session_id
        waiter = self._waiting[request_id] = defer.Deferred()
        self._send(_TEXT, json.dumps(envelope).encode())
        return waiter

    def hello(self, event_mode: str, resume: dict | None = None) -> defer.Deferred:
        params = {"client": {"name": "bench", "version": "1"}, "eventMode": event_mode}
        if resume is not None:
            params["resume"] = resume
        return self.call("hello", params)

    def until_seq(self, seq: int) -> defer.Deferred:
        """Fire with ``time.perf_counter()`` at the arrival of the first event whose seq
        is at least ``seq`` (at once if one has arrived)."""
        if self.last_seq >= seq:
            return defer.succeed(time.perf_counter())
        waiter = defer.Deferred()
        self._seq_waiter = (seq, waiter)
        return waiter

    def close(self) -> defer.Deferred:
        """Drop the connection; fires once it is gone."""
        self.transport.loseConnection()
        return self.lost

    def until_type(self, event_type: str) -> defer.Deferred:
        """Fire with ``time.perf_counter()`` at the arrival of the next event of that type."""
        waiter = defer.Deferred()
        self._type_waiter = (event_type.encode(), waiter)
        return waiter

    def _send(self, opcode: int, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 1 << 16:
            header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
        mask = os.urandom(4)
        key = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
        self.transport.write(header + mask + masked)

    # -- Protocol -----------------------------------------------------------

    def connectionMade(self):
        self.transport.write(self._request)

    def dataReceived(self, data: bytes):
        self.wire_bytes += len(data)
        self._buffer += data
        if not self._open:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + 4]
            if b" 101 " not in status:
                self.transport.loseConnection()
                self.upgraded.errback(HandshakeRefused(status.decode(errors="replace")))
                return
            self._open = True
            self.upgraded.callback(self)
        self._split_frames()

    def connectionLost(self, reason=None):
        failure = CallFailed(f"connection lost: {reason.getErrorMessage() if reason else ''}")
        if not self.upgraded.called:
            self.upgraded.errback(failure)
        for waiter in self._waiting.values():
            waiter.errback(failure)
        self._waiting.clear()
        for pending in (self._seq_waiter, self._type_waiter):
            if pending is not None:
                pending[1].errback(failure)
        self._seq_waiter = self._type_waiter = None
        self.lost.callback(None)

    def _split_frames(self) -> None:
        buffer = self._buffer
        size = len(buffer)
        position = 0
        while size - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                head = 4
                if size - position < head:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 4], "big")
            elif length == 127:
                head = 10
                if size - position < head:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 10], "big")
            start = position + head
            end = start + length
            if end > size:
                break
            position = end
            self._frame(first, buffer, start, end)
        del buffer[:position]

    def _frame(self, first: int, buffer: bytearray, start: int, end: int) -> None:
        opcode = first & 0x0F
        final = first & 0x80
        if opcode == _PING:
            self._send(_PONG, bytes(buffer[start:end]))
            return
        if opcode == _CLOSE:
            if end - start >= 2:
                self.close_code = int.from_bytes(buffer[start : start + 2], "big")
            self.transport.loseConnection()
            return
        if opcode == _CONTINUATION or not final:
            self._fragments = (self._fragments or []) + [bytes(buffer[start:end])]
            if not final:
                return
            message, self._fragments = b"".join(self._fragments), None
            self._message(memoryview(message), 0, len(message))
            return
        self._message(buffer, start, end)

    def _message(self, buffer, start: int, end: int) -> None:
        head = bytes(buffer[start : min(end, start + 120)])
        if head.startswith(_EVENT_HEAD):
            self.event_frames += 1
            self.event_bytes += end - start
            seq, event_type = _HEAD.search(head).groups()
            self.last_seq = int(seq)
            if self.decode:
                json.loads(bytes(buffer[start:end]))
            if self._seq_waiter is not None and self.last_seq >= self._seq_waiter[0]:
                _, waiter = self._seq_waiter
                self._seq_waiter = None
                waiter.callback(time.perf_counter())
            if self._type_waiter is not None and self._type_waiter[0] == event_type:
                _, waiter = self._type_waiter
                self._type_waiter = None
                waiter.callback(time.perf_counter())
            return
        frame = json.loads(bytes(buffer[start:end]))
        waiter = self._waiting.pop(frame.get("id"), None)
        if waiter is None:
            return
        if frame.get("ok"):
            waiter.callback(frame.get("result"))
        else:
            waiter.errback(CallFailed(json.dumps(frame.get("error"))))


async def connect(
    reactor,
    port: int,
    token: str,
    event_mode: str | None = "full",
    decode: bool = False,
    host: str = "127.0.0.1",
) -> LeanClient:
    """A client past the upgrade and, unless ``event_mode`` is None, ``hello``."""
    endpoint = TCP4ClientEndpoint(reactor, host, port)
    client = await endpoint.connect(
        protocol.Factory.forProtocol(lambda: LeanClient(host, port, token, decode))
    )
    await client.upgraded
    if event_mode is not None:
        await client.hello(event_mode)
    return client
