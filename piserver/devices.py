"""
Revoking a device token ends that device's open connections at once, even when
``pi-server token revoke`` runs in another process: the running server looks
at the token store every second.
"""

from collections.abc import Callable, Iterable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

# The credential this connection was opened with is gone (application range 4000-4999,
# where Autobahn lets a server close; 4000 + HTTP's 403).
CLOSE_REVOKED = 4003
REVOKED_REASON = "device token revoked"


class RevocationWatcher(Service):
    """
    Every ``interval`` seconds, closes (4003) each live connection opened with a
    device token whose device is no longer in ``store.names()``.

    ``live_connections`` returns the connections (objects with ``device``,
    ``connection_id`` and ``close(code, reason)``); connections of the server
    token (``device`` None) are never touched.
    """

    name = "revocations"
    log = Logger()

    def __init__(self, store, live_connections: Callable[[], Iterable], clock,
                 interval: float = 1.0):
        self._store = store
        self._live_connections = live_connections
        self._clock = clock
        self._interval = interval
        self._loop = None
        # Connections already told to close, until they are gone: each is closed once.
        self._closing: dict[str, object] = {}

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> int:
        """Close the connections of revoked devices now; return how many were closed."""
        try:
            connections = [c for c in self._live_connections() if c.device is not None]
            if not connections:
                self._closing.clear()
                return 0
            names = self._store.names()
        except Exception:
            # A failing store or table must not stop the watcher: try again next time.
            self.log.failure("could not check for revoked device tokens")
            return 0
        live_ids = {c.connection_id for c in connections}
        self._closing = {i: c for i, c in self._closing.items() if i in live_ids}
        closed = 0
        for connection in connections:
            if connection.device in names or connection.connection_id in self._closing:
                continue
            self._closing[connection.connection_id] = connection
            self.log.info(
                "closing connection {connection_id}: the token of device {device} was revoked",
                connection_id=connection.connection_id, device=connection.device,
            )
            try:
                connection.close(CLOSE_REVOKED, REVOKED_REASON)
            except Exception:
                self.log.failure("could not close connection {connection_id}",
                                 connection_id=connection.connection_id)
            closed += 1
        return closed
