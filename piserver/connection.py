"""
One client connection, independent of the WebSocket library: frames in,
replies and events out. ``ws.py`` only adapts Autobahn to this.
"""

from typing import Protocol

from twisted.logger import Logger

from .dispatch import Dispatcher
from .envelope import BadFrame, encode_error, encode_result, parse_request


class FrameSink(Protocol):
    def send_frame(self, data: bytes) -> None:
        """Queue one text frame holding ``data`` (UTF-8 JSON)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""


class Connection:
    log = Logger()

    def __init__(self, connection_id: str, dispatcher: Dispatcher, sink: FrameSink,
                 peer: str = "", device: str | None = None):
        self.connection_id = connection_id
        self.peer = peer
        # Name of the device token used to connect, if any (never the token).
        self.device = device
        self._dispatcher = dispatcher
        self._sink = sink
        self.open = True
        self.client: dict | None = None
        # Callbacks run when the connection goes away (sessions detach it).
        self._on_lost = []

    def frame_received(self, payload: bytes) -> None:
        try:
            request = parse_request(payload)
        except BadFrame as bad:
            self.log.info(
                "refused frame from {connection_id}: {code}: {message}",
                connection_id=self.connection_id, code=bad.error.code,
                message=bad.error.message,
            )
            self.send(encode_error(bad.request_id, bad.error, bad.session_id))
            return
        d = self._dispatcher.dispatch(self, request)
        d.addCallback(self._reply, request)

    def _reply(self, outcome, request) -> None:
        ok, value = outcome
        if ok:
            self.send(encode_result(request.id, value, request.session_id))
        else:
            self.send(encode_error(request.id, value, request.session_id))

    def send(self, data: bytes) -> None:
        if self.open:
            self._sink.send_frame(data)

    def close(self, code: int, reason: str) -> None:
        if self.open:
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
                self.log.failure("error cleaning up connection {connection_id}",
                                 connection_id=self.connection_id)
