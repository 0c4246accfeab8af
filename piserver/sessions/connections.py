"""
The connections a server has seen, remembered so that a client resuming its connection
(``hello`` with ``resume.connectionId``) gets its device's tools and its sessions back:
the open ones, and the last ``REMEMBERED_CONNECTIONS`` that closed (a phone often
reconnects before its old socket is noticed dead, or just after).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import attr

# Closed connections whose tools and sessions a resuming client can take over.
REMEMBERED_CONNECTIONS = 1000


@attr.frozen
class PreviousConnection:
    native_tools: list | None
    attached: frozenset


class ConnectionMemory:
    """``attached_to(connection)`` names the sessions a connection is attached to;
    ``lost(connection)`` is called after a watched connection closes (to detach it)."""

    def __init__(
        self,
        attached_to: Callable[[object], frozenset],
        lost: Callable[[object], None],
        limit: int = REMEMBERED_CONNECTIONS,
    ) -> None:
        self._attached_to = attached_to
        self._lost = lost
        self._limit = limit
        self._open: dict[str, object] = {}
        self._departed: collections.OrderedDict[str, PreviousConnection] = collections.OrderedDict()

    def watch(self, connection) -> bool:
        """Keep track of ``connection``; True when it was not watched yet."""
        if connection.connection_id in self._open:
            return False
        self._open[connection.connection_id] = connection
        connection.on_lost(self._connection_lost)
        return True

    def previous(self, connection_id: str) -> PreviousConnection | None:
        """What connection ``connection_id`` had (its device's tools, the sessions it was
        attached to), closed or still open; None for a connection never seen."""
        live = self._open.get(connection_id)
        if live is not None:
            return PreviousConnection(live.native_tools, self._attached_to(live))
        return self._departed.get(connection_id)

    def _connection_lost(self, connection) -> None:
        self._open.pop(connection.connection_id, None)
        self._departed[connection.connection_id] = PreviousConnection(
            connection.native_tools, self._attached_to(connection)
        )
        while len(self._departed) > self._limit:
            self._departed.popitem(last=False)
        self._lost(connection)
