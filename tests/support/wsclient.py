"""
A real WebSocket client for tests: connects over loopback, sends requests,
waits for the reply to each and collects events per session.
"""

import itertools
import json
from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from twisted.internet.defer import Deferred, DeferredQueue

from tests.support.schema import check_received


class RpcClientProtocol(WebSocketClientProtocol):
    def dataReceived(self, data):
        # Bytes as they came off the socket: compressed, when deflate is on.
        self.factory.client.wire_bytes += len(data)
        super().dataReceived(data)

    def onOpen(self):
        self.factory.client._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.client._received(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        self.factory.client._closed(wasClean, code, reason)


# A safety net, not a sleep: a wait that outlives it fails the test instead of hanging
# the suite.
WAIT_TIMEOUT = 60.0


class RpcClient:
    """``yield RpcClient.connect(...)``, then ``yield client.call("hello", {...})``."""

    def __init__(self, reactor=None):
        self.reactor = reactor
        self.protocol = None
        self.frames = []  # every decoded frame, in arrival order
        self.payload_bytes = 0  # sum of frame payload sizes (uncompressed)
        self.wire_bytes = 0  # bytes read from the socket, upgrade response included
        self.events = DeferredQueue()
        self.opened = Deferred()
        self.closed = Deferred()
        self.close_code = None
        self._waiting = {}
        self._ids = itertools.count(1)
        self._event_waiters = []
        self._frame_waiters = []
        # The method of each request sent, for checking its response against the schema.
        self._methods = {}

    @classmethod
    def connect(
        cls,
        reactor,
        port,
        token=None,
        headers=None,
        query=None,
        path="/rpc",
        host="127.0.0.1",
        deflate=False,
        **options,
    ):
        client = cls(reactor)
        params = dict(query or {})
        if token is not None:
            params["token"] = token
        url = f"ws://{host}:{port}{path}"
        if params:
            url += "?" + urlencode(params)
        factory = WebSocketClientFactory(url, headers=headers or {}, reactor=reactor)
        if deflate:
            options["perMessageCompressionOffers"] = [PerMessageDeflateOffer()]
            options["perMessageCompressionAccept"] = lambda response: (
                PerMessageDeflateResponseAccept(response)
                if isinstance(response, PerMessageDeflateResponse)
                else None
            )
        factory.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0, **options)
        factory.protocol = RpcClientProtocol
        factory.client = client
        # A refused upgrade closes before onOpen: fail `opened` with the close code.
        client.closed.addCallback(
            lambda info: (
                (
                    client.opened.errback(ConnectionRefusedByServer(info))
                    if not client.opened.called
                    else None
                )
                or info
            )
        )
        connectWS(factory)
        return client.opened

    def _opened(self, protocol):
        self.protocol = protocol
        self.opened.callback(self)

    def _received(self, payload, is_binary):
        self.payload_bytes += len(payload)
        frame = json.loads(payload)
        self.frames.append(frame)
        check_received(
            frame,
            self._methods.pop(frame.get("id"), None)
            if isinstance(frame, dict) and frame.get("kind") == "response"
            else None,
        )
        waiters, self._frame_waiters = self._frame_waiters, []
        for d in waiters:
            d.callback(frame)
        if frame.get("kind") == "response" and frame.get("id") in self._waiting:
            self._waiting.pop(frame["id"]).callback(frame)
        elif frame.get("kind") == "event":
            self.events.put(frame)
            for waiter in list(self._event_waiters):
                predicate, d = waiter
                if predicate(frame):
                    self._event_waiters.remove(waiter)
                    d.callback(frame)

    def _closed(self, was_clean, code, reason):
        self.close_code = code
        for d in self._waiting.values():
            d.errback(ConnectionRefusedByServer((was_clean, code, reason)))
        self._waiting.clear()
        if not self.closed.called:
            self.closed.callback((was_clean, code, reason))

    def next_frame(self):
        """Fire with the next frame received, whatever its kind."""
        d = Deferred()
        self._frame_waiters.append(d)
        return self._limited(d)

    def expect_reply(self, request_id):
        """Fire with the response to ``request_id``, for a request sent with send_raw."""
        d = self._waiting[request_id] = Deferred()
        return self._limited(d)

    def send_raw(self, payload: bytes, binary=False):
        self.protocol.sendMessage(payload, isBinary=binary)

    def request(self, method, params=None, session_id=None, binary=False, request_id=None):
        """Send a request and return a Deferred firing with the whole response frame."""
        request_id = request_id or f"r{next(self._ids)}"
        envelope = {"v": 1, "kind": "request", "id": request_id, "method": method}
        if params is not None:
            envelope["params"] = params
        if session_id is not None:
            envelope["sessionId"] = session_id
        d = self.expect_reply(request_id)
        self._methods[request_id] = method
        self.send_raw(json.dumps(envelope).encode(), binary=binary)
        return d

    def call(self, method, params=None, session_id=None, binary=False):
        """Like request, but fire with ``result`` or fail with CallFailed."""
        d = self.request(method, params, session_id, binary)

        def unwrap(frame):
            if not frame["ok"]:
                raise CallFailed(frame["error"]["code"], frame["error"]["message"])
            return frame["result"]

        return d.addCallback(unwrap)

    def wait_for_event(self, predicate):
        """Fire with the first event (already received or future) matching predicate."""
        for frame in self.frames:
            if frame.get("kind") == "event" and predicate(frame):
                d = Deferred()
                d.callback(frame)
                return d
        d = Deferred()
        self._event_waiters.append((predicate, d))
        return self._limited(d)

    def _limited(self, d):
        if self.reactor is not None:
            d.addTimeout(WAIT_TIMEOUT, self.reactor)
        return d

    def event_frames(self, session_id=None):
        return [
            f
            for f in self.frames
            if f.get("kind") == "event" and (session_id is None or f.get("sessionId") == session_id)
        ]

    def disconnect(self):
        self.protocol.sendClose()
        return self.closed

    def drop(self):
        """Drop the TCP connection without a close handshake."""
        self.protocol.transport.abortConnection()
        return self.closed


class CallFailed(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionRefusedByServer(Exception):
    pass


def is_type(event_type, session_id=None):
    """A ``wait_for_event`` predicate: an event of that type (of that session)."""
    return lambda f: (
        f["type"] == event_type and (session_id is None or f["sessionId"] == session_id)
    )
