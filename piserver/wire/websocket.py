"""
Thin Autobahn adapter: authenticates the upgrade, then hands frames to a
``Connection`` and sends what it gives back.
"""

import socket
import struct

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from piserver.common.defaults import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)
from piserver.security.addresses import TrustedProxies
from piserver.security.auth import Unauthorized
from piserver.security.origins import host_allowed, is_loopback, normal_name, origin_allowed

# Close code for a frame over the size limit (RFC 6455 "message too big").
CLOSE_TOO_BIG = 1009

# The head of an unmasked, unfragmented text frame (RFC 6455 5.2): FIN and opcode 1, then
# the payload length in 7 bits, or 126 and 16 bits, or 127 and 64 bits.
_SHORT_HEAD = struct.Struct("!BB")
_MEDIUM_HEAD = struct.Struct("!BBH")
_LONG_HEAD = struct.Struct("!BBQ")


def text_frame_head(size: int) -> bytes:
    """The bytes before a ``size``-byte payload in a server's text frame."""
    if size <= 125:
        return _SHORT_HEAD.pack(0x81, size)
    if size <= 0xFFFF:
        return _MEDIUM_HEAD.pack(0x81, 126, size)
    return _LONG_HEAD.pack(0x81, 127, size)


# Not the protocol's ``log`` attribute: that is Autobahn's own (txaio) logger, whose debug
# events (raw upgrade requests, with their tokens) stay off; a twisted Logger there would
# write them.
log = Logger()


class RpcServerProtocol(WebSocketServerProtocol):
    connection = None
    _identity = None
    # Frames written here, not through sendMessage (see send_frame); set once open.
    _frames_direct = False

    def onConnect(self, request):
        factory = self.factory
        # Behind a trusted reverse proxy, the client it forwards (logs, refusals, the
        # connection's record); anyone else's forwarding headers are ignored.
        peer_host = getattr(self.transport.getPeer(), "host", None)
        if factory.proxies.trusts(peer_host):
            header = str(factory.proxies.header)
            values = [request.headers[header]] if header in request.headers else []
            client = factory.proxies.client(peer_host, values)
            if client != peer_host:
                self.peer = f"{client} (via {self.peer})"
        local = getattr(self.transport.getHost(), "host", None)
        names = factory.server_names | ({normal_name(local)} if local else set())
        host = request.headers.get("host")
        # On loopback only a page rebound to 127.0.0.1 would name another host.
        if is_loopback(local) and not host_allowed(host, names):
            self._refuse(
                "unknown_host",
                403,
                "this server is not known by that Host name "
                "(it can be given one with --server-name)",
            )
        # Browsers send Origin: a page elsewhere must not drive this server through them.
        origin = request.headers.get("origin")
        if origin is not None and not origin_allowed(
            origin, host, self._secure(), names, factory.allowed_origins
        ):
            self._refuse(
                "origin",
                403,
                "cross-origin upgrade refused: this origin is not "
                "allowed (the server can list it with --allowed-origin)",
            )
        try:
            self._identity = factory.authenticator.authenticate(request.headers, request.params)
        except Unauthorized as e:
            self._refuse("unauthorized", 401, e.reason)
        # The count includes this connection.
        if factory.getConnectionCount() > factory.max_connections:
            self._refuse(
                "too_many_connections",
                503,
                f"too many connections: this server accepts "
                f"{factory.max_connections} at once; try again later",
            )
        return None

    def _refuse(self, kind: str, status: int, reason: str):
        self.factory.refusals.refused(kind, self.peer, reason)
        raise ConnectionDeny(status, reason)

    def _fail_connection(self, *args, **kwargs):
        # A broken or oversized frame: counted, logged at a bounded rate (Autobahn's own
        # line about it is below the level its logger writes).
        if self.state != self.STATE_CLOSED:
            self.factory.refusals.refused(
                "bad_frame", self.peer, "broken or oversized WebSocket frame"
            )
        return super()._fail_connection(*args, **kwargs)

    def _secure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def onOpen(self):
        # Authenticated: no longer one of the connections strangers may hold.
        self._release_pending()
        identity = self._identity
        self.connection = self.factory.hub.connect(
            self,
            peer=self.peer,
            device=identity.device if identity else None,
            device_token_id=identity.token_id if identity else None,
            grant=identity.grant if identity else None,
        )
        # The HTTP channel registered itself as the socket's producer for the upgrade
        # request; the socket is ours now, and its pause/resume tells us a client is slow.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self.connection.backpressure, True)
        self._frames_direct = (
            self.factory.frames_direct
            and self._perMessageCompress is None
            and not self.autoFragmentSize
            and not (self.logFrames or self.logOctets or self.trackTimings)
        )

    def onMessage(self, payload, isBinary):
        self.connection.frame_received(payload)

    def onClose(self, wasClean, code, reason):
        if self.connection is not None:
            self.connection.lost()

    def connectionLost(self, reason):
        self._release_pending()
        super().connectionLost(reason)

    def _release_pending(self):
        pending = self.factory.pending_connections
        if pending is not None and self.transport is not None:
            pending.release(self.transport)

    # FrameSink
    @property
    def max_frame_size(self) -> int:
        return self.maxMessagePayloadSize

    def send_frame(self, data: bytes) -> None:
        # Autobahn's sendMessage builds the arguments of a debug line for every frame
        # (sendData colours them with click) even when its debug level is off: most of
        # what sending an event cost. Without compression a frame is only a head and the
        # payload, written here as they are; anything else (closing, a frame over the
        # limit, which sendMessage refuses) goes through Autobahn.
        if (
            self._frames_direct
            and self.state == self.STATE_OPEN
            and not self.send_queue
            and not 0 < self.maxMessagePayloadSize < len(data)
        ):
            self.transport.writeSequence((text_frame_head(len(data)), data))
        else:
            self.sendMessage(data, isBinary=False)

    def close(self, code: int, reason: str) -> None:
        self.sendClose(code, reason)


def _accept_deflate(offers):
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class RpcServerFactory(WebSocketServerFactory):
    protocol = RpcServerProtocol

    def __init__(
        self,
        hub,
        authenticator,
        max_frame_size: int,
        reactor=None,
        *,
        allowed_origins=frozenset(),
        max_connections=DEFAULT_MAX_CONNECTIONS,
        handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT,
        keepalive_interval=DEFAULT_KEEPALIVE_INTERVAL,
        keepalive_timeout=DEFAULT_KEEPALIVE_TIMEOUT,
        refusals,
        server_names=(),
        library_log_level="error",
        proxies=None,
        pending_connections=None,
    ):
        # No version in the Server header of upgrade answers.
        super().__init__(reactor=reactor, server="pi-server")
        # Autobahn writes a line or more (info, warn) for every refused upgrade and broken
        # frame a stranger sends; the refusals are counted and logged here, rate-limited.
        # With --log-level debug its debug events (every frame) are asked for: credentials
        # in them are redacted (redact.py).
        txaio.set_global_log_level(library_log_level)
        # Autobahn's debug lines show every frame sent: at debug level they go through it.
        self.frames_direct = library_log_level != "debug"
        self.hub = hub
        self.authenticator = authenticator
        # refusals.Refusals: counts (in the metrics) and logs what is refused to strangers.
        self.refusals = refusals
        # origins.Origin values, besides the server's own, that browsers may connect from.
        self.allowed_origins = frozenset(allowed_origins)
        # What the server is called, besides the address a client connected to.
        self.server_names = frozenset(
            normal_name(n) for n in ("localhost", socket.gethostname(), *server_names)
        )
        self.max_connections = max_connections
        # security.addresses.TrustedProxies: whose forwarding headers name the client.
        self.proxies = TrustedProxies() if proxies is None else proxies
        # security.admission.PendingConnections, shared with the HTTP site: an upgrade
        # counts among the connections not authenticated until it is open.
        self.pending_connections = pending_connections
        # Autobahn schedules its timers (handshake, ping, close) on txaio's global reactor:
        # route them through ours, so a fake clock drives them too.
        self._batched_timer = ReactorTimer(self.reactor)
        self.setProtocolOptions(
            maxFramePayloadSize=max_frame_size,
            maxMessagePayloadSize=max_frame_size,
            # Invalid UTF-8 in a text frame is answered with parse_error, not a close.
            utf8validateIncoming=False,
            # Refusing an oversize frame sends a close frame (1009) the client can read,
            # instead of dropping TCP.
            failByDrop=False,
            # permessage-deflate when the client offers it: JSON events compress well.
            perMessageCompressionAccept=_accept_deflate,
            openHandshakeTimeout=handshake_timeout,
            autoPingInterval=keepalive_interval,
            autoPingTimeout=keepalive_timeout,
            # "Origin: null" (sandboxed pages, files) reaches onConnect, refused there with 403.
            allowNullOrigin=True,
        )


class ReactorTimer:
    """Autobahn's timer interface (``call_later`` and ``cancel``) on a given reactor."""

    def __init__(self, clock):
        self._clock = clock

    def call_later(self, delay, func, *args, **kwargs):
        return _Cancellable(self._clock.callLater(delay, func, *args, **kwargs))


class _Cancellable:
    def __init__(self, call):
        self._call = call

    def cancel(self):
        if self._call.active():
            self._call.cancel()
