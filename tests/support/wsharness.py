"""
/rpc over in-memory transports (autobahn.twisted.testing) on a fake clock: the
real ``RpcServerFactory`` and ``Hub``, Autobahn clients, no sockets, no waiting.
Time moves only when a test calls ``advance``; bytes move only on ``flush``.
"""

import json

from autobahn.twisted.testing import MemoryReactorClockResolver, create_memory_agent, create_pumper
from autobahn.twisted.websocket import WebSocketClientProtocol

from piserver.api.methods import RpcMethods
from piserver.ops.metrics import ServerMetrics
from piserver.security.auth import Authenticator
from piserver.security.refusals import Refusals
from piserver.wire.hub import Hub
from piserver.wire.websocket import RpcServerFactory


class RecordingClient(WebSocketClientProtocol):
    """Keeps every frame and how the connection ended."""

    def __init__(self):
        super().__init__()
        self.opened = False
        self.received = []
        self.close_info = None

    def onOpen(self):
        self.opened = True

    def onMessage(self, payload, isBinary):
        self.received.append(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.close_info = (wasClean, code, reason)


class SilentClient(RecordingClient):
    """A phone that vanished: its socket stays open but nothing answers pings."""

    def onPing(self, payload):
        pass


def hello_frame(request_id="1"):
    return json.dumps(
        {
            "v": 1,
            "kind": "request",
            "id": request_id,
            "method": "hello",
            "params": {"client": {"name": "tests", "version": "1"}},
        }
    ).encode()


class MemoryServer:
    def __init__(self, authenticator=None, methods=None, **factory_options):
        self.reactor = MemoryReactorClockResolver()
        self.pumper = create_pumper()
        self.hub = Hub(RpcMethods().table() if methods is None else methods)
        self.factory = RpcServerFactory(
            self.hub,
            authenticator or Authenticator(None),
            1024 * 1024,
            reactor=self.reactor,
            **({"refusals": Refusals(ServerMetrics(self.reactor), self.reactor)} | factory_options),
        )
        self.agent = create_memory_agent(
            self.reactor, self.pumper, lambda: self.factory.buildProtocol(None)
        )

    def open(self, url="ws://localhost:3141/rpc", headers=None, protocol_class=RecordingClient):
        """
        The client protocol once the upgrade is answered: ``opened``, or refused with
        ``close_info`` saying why (HTTP status and reason).
        """
        clients = []

        def build():
            clients.append(protocol_class())
            return clients[-1]

        self.agent.open(url, {"headers": headers or {}}, protocol_class=build)
        self.flush()
        (client,) = clients
        return client

    def flush(self):
        self.pumper._flush()

    def advance(self, seconds):
        self.reactor.advance(seconds)
        self.flush()
