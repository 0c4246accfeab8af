"""
One client connection, independent of the WebSocket library: frames in,
replies and events out. ``ws.py`` only adapts Autobahn to this.
"""

from typing import Protocol

import attr
from twisted.logger import Logger

from piserver.common.errors import RateLimited, ResponseTooLarge
from piserver.security.scopes import Grant
from piserver.wire.dispatch import Dispatcher
from piserver.wire.envelope import (
    BadFrame,
    encode_error,
    encode_result,
    event_too_large,
    parse_request,
)
from piserver.wire.ratelimit import TokenBucket


class FrameSink(Protocol):
    # The largest payload a frame may carry (--max-frame-size; 0: no limit). Optional:
    # a sink without it is taken to have no limit.
    max_frame_size: int

    def send_frame(self, data: bytes) -> None:
        """Queue one text frame holding ``data`` (UTF-8 JSON)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""


# Close code for a client too slow to take its events (application range 4000-4999).
CLOSE_TOO_SLOW = 4008
DEFAULT_SEND_BUFFER_LIMIT = 16 * 1024 * 1024


class Backpressure:
    """
    The socket's producer: the transport pauses it when its write buffer is full
    and resumes it when drained. Bytes queued while paused are counted; past the
    limit the connection is closed, so a stalled client never holds memory (or
    anyone else) back. It may resume later.
    """

    def __init__(self, connection, limit: int):
        self._connection = connection
        self._limit = limit
        self.paused = False
        self.queued = 0

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.queued = 0

    def stopProducing(self):
        self.paused = False

    def sent(self, size: int) -> None:
        if not self.paused:
            return
        self.queued += size
        if self.queued > self._limit:
            self._connection.too_slow(self.queued)


class Connection:
    log = Logger()

    def __init__(
        self,
        connection_id: str,
        dispatcher: Dispatcher,
        sink: FrameSink,
        peer: str = "",
        device: str | None = None,
        send_buffer_limit: int = DEFAULT_SEND_BUFFER_LIMIT,
        requests: TokenBucket | None = None,
        redact=None,
    ):
        self.connection_id = connection_id
        self.peer = peer
        # Name of the device token used to connect, if any (never the token).
        self.device = device
        # Which token of that device (tokens.DeviceTokenStore.identify): revocation is by it.
        self.device_token_id: str | None = None
        # What its token may do (security/scopes.py); without authentication, everything.
        self.grant = Grant.server_token()
        self._dispatcher = dispatcher
        self._sink = sink
        self.open = True
        self._closing = False
        self.client: dict | None = None
        # "full" or "delta", chosen by hello (see stream.py).
        self.event_mode = "full"
        # The tools this device can run (hello.params.nativeTools); None: never declared.
        self.native_tools = None
        # What the client reads beyond the seed's protocol (hello.params.features).
        self.features: frozenset = frozenset()
        # Callbacks run when the connection goes away (sessions detach it).
        self._on_lost = []
        self.backpressure = Backpressure(self, send_buffer_limit)
        # Requests allowed per second (None: no limit).
        self._requests = requests
        # Removes secret values from error messages (an agent's error may quote a key).
        self._redact = redact

    def frame_received(self, payload: bytes) -> None:
        try:
            request = parse_request(payload)
        except BadFrame as bad:
            # Debug only: a hostile client must not be able to fill the log.
            self.log.debug(
                "refused frame from {connection_id}: {code}: {message}",
                connection_id=self.connection_id,
                code=bad.error.code,
                message=bad.error.message,
            )
            self.send(encode_error(bad.request_id, bad.error, bad.session_id))
            return
        if self._requests is not None and not self._requests.take():
            self.send(
                encode_error(
                    request.id,
                    RateLimited("too many requests: slow down and retry"),
                    request.session_id,
                )
            )
            return
        d = self._dispatcher.dispatch(self, request)
        d.addCallback(self._reply, request)

    def _reply(self, outcome, request) -> None:
        ok, value, repeat = outcome
        if ok:
            data = encode_result(request.id, value, request.session_id, repeat=repeat)
            limit = getattr(self._sink, "max_frame_size", 0)
            if 0 < limit < len(data):
                # The client could not take it (the frame would be refused): it gets an
                # answer it can read instead of none.
                self.log.warn(
                    "connection {connection_id}: the answer to {method} is {size} bytes, "
                    "over --max-frame-size {limit}: answered response_too_large",
                    connection_id=self.connection_id,
                    method=request.method,
                    size=len(data),
                    limit=limit,
                )
                value = ResponseTooLarge(
                    f"the answer is {len(data)} bytes, larger than this server's "
                    f"--max-frame-size of {limit} bytes"
                )
                self.send(encode_error(request.id, value, request.session_id, repeat=repeat))
                return
            self.send(data)
        else:
            if self._redact is not None:
                value = attr.evolve(value, message=self._redact(value.message))
            self.send(encode_error(request.id, value, request.session_id, repeat=repeat))

    def send(self, data: bytes) -> None:
        if self.open and not self._closing:
            limit = getattr(self._sink, "max_frame_size", 0)
            if 0 < limit < len(data):
                data = self._too_large(data, limit)
                if data is None:
                    return
            self._sink.send_frame(data)
            self.backpressure.sent(len(data))

    def _too_large(self, data: bytes, limit: int) -> bytes | None:
        """What is sent instead of a frame the client could not take (the WebSocket
        library would refuse it): an event becomes a small ``event_too_large`` at its
        seq, so the client sees what it missed; anything else is left out, logged."""
        replacement = event_too_large(data, limit)
        self.log.warn(
            "connection {connection_id}: a frame of {size} bytes is over --max-frame-size "
            "{limit}: {what}",
            connection_id=self.connection_id,
            size=len(data),
            limit=limit,
            what="sent event_too_large instead" if replacement else "not sent",
        )
        return replacement

    def too_slow(self, queued: int) -> None:
        self.log.warn(
            "closing connection {connection_id}: {queued} bytes wait for a client that does "
            "not read; it can resume",
            connection_id=self.connection_id,
            queued=queued,
        )
        self.close(CLOSE_TOO_SLOW, "too slow: events are waiting; reconnect and resume")

    def close(self, code: int, reason: str) -> None:
        if self.open and not self._closing:
            # Nothing more is queued for it; sessions detach it once it is gone.
            self._closing = True
            self._sink.close(code, reason)

    def on_lost(self, callback) -> None:
        self._on_lost.append(callback)

    def lost(self) -> None:
        if not self.open:
            return
        self.open = False
        callbacks, self._on_lost = self._on_lost, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                self.log.failure(
                    "error cleaning up connection {connection_id}", connection_id=self.connection_id
                )
