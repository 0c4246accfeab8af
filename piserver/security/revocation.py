"""
Revoking a device token ends the open connections made with that token at once,
even when ``pi-server token revoke`` runs in another process: the running
server is told of each change of the token file (inotify) and looks at it every
second besides. A token is known by its identity, not by its device's name: a
device revoked and added again keeps none of the old token's connections.
"""

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

# The credential this connection was opened with is gone (application range 4000-4999,
# where Autobahn lets a server close; 4000 + HTTP's 403).
CLOSE_REVOKED = 4003
REVOKED_REASON = "device token revoked"


class RevocationWatcher(Service):
    """
    Closes (4003) each live connection opened with a device token that is no
    longer in ``store.token_ids()``: when ``token_file`` changes (if given and
    the platform has inotify) and every ``interval`` seconds.

    ``live_connections`` returns the connections (objects with ``device``,
    ``device_token_id``, ``connection_id`` and ``close(code, reason)``);
    connections of the server token (``device`` None) are never touched.
    ``on_revoked(valid_token_ids)``, when given, is told each time tokens were revoked (the
    push subscriptions of revoked tokens go then).
    """

    name = "revocations"
    log = Logger()

    def __init__(
        self,
        store,
        live_connections: Callable[[], Iterable],
        clock,
        interval: float = 1.0,
        token_file: Path | None = None,
        reactor=None,
        on_revoked: Callable[[frozenset], None] | None = None,
    ):
        self._store = store
        self._on_revoked = on_revoked
        self._valid: frozenset | None = None
        self._token_file = token_file
        self._reactor = reactor
        self._notifier = None
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
        if self._token_file is not None:
            self._watch(Path(self._token_file))

    def _watch(self, token_file: Path) -> None:
        try:
            from twisted.internet import inotify

            notifier = inotify.INotify(reactor=self._reactor)
            notifier.startReading()
            # The directory: the file is replaced by rename, which a watch on it would miss.
            notifier.watch(
                FilePath(str(token_file.parent)),
                mask=inotify.IN_MOVED_TO
                | inotify.IN_CLOSE_WRITE
                | inotify.IN_DELETE
                | inotify.IN_MOVED_FROM,
                callbacks=[self._changed],
            )
        except Exception as e:
            self.log.info(
                "revocations are checked every {interval} s ({reason})",
                interval=self._interval,
                reason=str(e),
            )
            return
        self._notifier = notifier

    def _changed(self, _watch, path, _mask) -> None:
        # inotify names paths in bytes.
        if os.fsdecode(path.basename()) == Path(self._token_file).name:
            self.check()

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None

    def check(self) -> int:
        """Close the connections of revoked devices now; return how many were closed."""
        try:
            valid = self._store.token_ids()
            if self._on_revoked is not None and self._valid is not None and self._valid - valid:
                self._on_revoked(valid)
            self._valid = valid
            connections = [c for c in self._live_connections() if c.device is not None]
            if not connections:
                self._closing.clear()
                return 0
        except Exception:
            # A failing store or table must not stop the watcher: try again next time.
            self.log.failure("could not check for revoked device tokens")
            return 0
        live_ids = {c.connection_id for c in connections}
        self._closing = {i: c for i, c in self._closing.items() if i in live_ids}
        closed = 0
        for connection in connections:
            if connection.device_token_id in valid or connection.connection_id in self._closing:
                continue
            self._closing[connection.connection_id] = connection
            self.log.info(
                "closing connection {connection_id}: the token of device {device} was revoked",
                connection_id=connection.connection_id,
                device=connection.device,
            )
            try:
                connection.close(CLOSE_REVOKED, REVOKED_REASON)
            except Exception:
                self.log.failure(
                    "could not close connection {connection_id}",
                    connection_id=connection.connection_id,
                )
            closed += 1
        return closed
