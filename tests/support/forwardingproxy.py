"""
A small reverse proxy on Twisted, for tests of pi-server behind one:
``python -m tests.support.forwardingproxy LISTEN_PORT BACKEND_PORT SOURCE_ADDRESS``.

Each client connection gets its own connection to the backend at once (from
``SOURCE_ADDRESS``, so the backend sees the proxy's address, not the client's), as a proxy
that does not buffer requests does. The first request's head is passed on with an
``X-Forwarded-For`` naming the client appended to the one it sent (as nginx's
``$proxy_add_x_forwarded_for`` does); after it, bytes go both ways untouched, so a
WebSocket upgrade works through it. It prints ``ready`` once listening.
"""

import sys

from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint


class Back(protocol.Protocol):
    def __init__(self, front):
        self.front = front

    def dataReceived(self, data):
        self.front.transport.write(data)

    def connectionLost(self, reason):
        self.front.transport.loseConnection()


class Front(protocol.Protocol):
    def __init__(self, reactor, backend_port, source):
        self.reactor = reactor
        self.backend_port = backend_port
        self.source = source
        self.head = b""
        self.passing = False
        self.waiting = []
        self.back = None

    def connectionMade(self):
        endpoint = TCP4ClientEndpoint(
            self.reactor, "127.0.0.1", self.backend_port, bindAddress=(self.source, 0)
        )
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: Back(self)))
        d.addCallbacks(self._connected, lambda failure: self.transport.loseConnection())

    def _connected(self, back):
        self.back = back
        for data in self.waiting:
            back.transport.write(data)
        self.waiting = []

    def _send(self, data):
        if self.back is None:
            self.waiting.append(data)
        else:
            self.back.transport.write(data)

    def dataReceived(self, data):
        if self.passing:
            self._send(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, rest = self.head.split(b"\r\n\r\n", 1)
        client = self.transport.getPeer().host.encode()
        lines = head.split(b"\r\n")
        sent = [line for line in lines if line.lower().startswith(b"x-forwarded-for:")]
        kept = [line for line in lines if not line.lower().startswith(b"x-forwarded-for:")]
        chain = b", ".join([*(line.split(b":", 1)[1].strip() for line in sent), client])
        self.passing = True
        self._send(b"\r\n".join([*kept, b"X-Forwarded-For: " + chain]) + b"\r\n\r\n" + rest)

    def connectionLost(self, reason):
        if self.back is not None:
            self.back.transport.loseConnection()


def main(listen_port: str, backend_port: str, source: str) -> None:
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(lambda: Front(reactor, int(backend_port), source))
    listening = TCP4ServerEndpoint(reactor, int(listen_port), interface="127.0.0.1").listen(factory)
    listening.addCallback(lambda port: print("ready", flush=True))
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
