"""
Thin Autobahn adapter: authenticates the upgrade, then hands frames to a
``Connection`` and sends what it gives back.
"""

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger

from .auth import Unauthorized

# Close code for a frame over the size limit (RFC 6455 "message too big").
CLOSE_TOO_BIG = 1009


class RpcServerProtocol(WebSocketServerProtocol):
    log = Logger()
    connection = None
    _identity = None

    def onConnect(self, request):
        try:
            self._identity = self.factory.authenticator.authenticate(request.headers,
                                                                     request.params)
        except Unauthorized as e:
            self.log.warn("refused /rpc upgrade from {peer}: {reason}", peer=request.peer,
                          reason=e.reason)
            raise ConnectionDeny(401, e.reason) from None
        return None

    def onOpen(self):
        self.connection = self.factory.hub.connect(
            self, peer=self.peer, device=self._identity.device if self._identity else None
        )
        # The HTTP channel registered itself as the socket's producer for the upgrade
        # request; the socket is ours now, and its pause/resume tells us a client is slow.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self.connection.backpressure, True)

    def onMessage(self, payload, isBinary):
        self.connection.frame_received(payload)

    def onClose(self, wasClean, code, reason):
        if self.connection is not None:
            self.connection.lost()

    # FrameSink
    def send_frame(self, data: bytes) -> None:
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

    def __init__(self, hub, authenticator, max_frame_size: int, reactor=None):
        super().__init__(reactor=reactor)
        self.hub = hub
        self.authenticator = authenticator
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
        )
