"""
What keeps the warm pool (``warm.WarmAgents``) supplied: it fills when the service starts
and when a client connects, refills shortly after a create, empties when the service
stops, and hands a create its warm session. The sessions it holds are made and undone by
the session manager (a ``WarmMaker``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol

from piserver.agents import agentdir
from piserver.sessions.agents import SessionAgents
from piserver.sessions.session import Session
from piserver.sessions.warm import WarmAgents

# The pool refills this long after a create that took a warm agent has ended: after its
# reply has gone out (spawning takes the reactor a few milliseconds), and never while the
# agent handed over is still starting (two pi starting at once share the cores).
WARM_REFILL_DELAY = 0.1


class WarmMaker(Protocol):
    """What the supply asks of the session manager."""

    def provision_warm(self) -> Session:
        """A new chat session for the pool: directories, live parts, not registered."""

    def tear_down(self, session: Session) -> Awaitable:
        """Undo a session."""


class WarmSupply:
    """A ``WarmHost`` for a pool of ``count`` agents (none: every call does nothing).
    ``reactor`` provides IReactorTime; ``agents`` hears of the pool (``agents.warm``)
    and says whether another agent fits."""

    def __init__(
        self, reactor, data_dir: Path, agents: SessionAgents, maker: WarmMaker, count: int
    ) -> None:
        self._reactor = reactor
        self._data_dir = data_dir
        self._agents = agents
        self._maker = maker
        self._refill = None
        self._running = False
        self.pool = WarmAgents(count, self) if count else None
        agents.warm = self.pool

    # -- the host of WarmAgents -------------------------------------------

    def provision_warm(self) -> Session:
        return self._maker.provision_warm()

    async def discard_warm(self, session: Session) -> None:
        await self._maker.tear_down(session)

    def has_room(self) -> bool:
        return self._agents.has_room()

    def configuration(self) -> object:
        return agentdir.fingerprint(self._data_dir)

    # -- what the manager asks -------------------------------------------

    def start(self) -> None:
        self._running = True
        self.fill()

    async def stop(self) -> None:
        self._running = False
        if self._refill is not None and self._refill.active():
            self._refill.cancel()
        if self.pool is not None:
            await self.pool.close()

    def take(self) -> Session | None:
        """A warm chat session for a create, or None."""
        return self.pool.take() if self.pool is not None else None

    def fill(self) -> None:
        if self.pool is not None and self._running:
            self.pool.fill()

    def schedule_refill(self) -> None:
        if self.pool is not None and (self._refill is None or not self._refill.active()):
            self._refill = self._reactor.callLater(WARM_REFILL_DELAY, self.fill)
