"""
Warm agents: pi processes started ahead of the sessions they will serve.

A cold pi takes hundreds of milliseconds to start; a warm one is already running in the
directories of the next chat session (its working directory, pi's session dir), so
``session.create`` only hands it over. What a client chooses at create time reaches it at
run time: the system prompt and native tools through the server's pi extension, the model
by ``set_model``.

Warm agents count against ``--max-agents`` and are the first to go when room is needed;
they never make a session's agent go. Like a session's, a warm agent unused for
``--agent-idle-timeout`` is stopped: an idle server holds no pi processes. The pool fills
again when a client connects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet import defer
from twisted.logger import Logger

from .session import Session

DEFAULT_WARM_AGENTS = 1
# Stages in which a warm agent can be handed over.
USABLE = ("starting", "running")


class WarmAgents:
    """``provision()`` makes a new provisional chat session (its directories, stream and
    lifecycle); ``remove(session)`` undoes one; ``has_room()`` says whether another agent
    fits under --max-agents."""

    log = Logger()

    def __init__(
        self,
        count: int,
        provision: Callable[[], Session],
        remove: Callable[[Session], Awaitable[None]],
        has_room: Callable[[], bool],
    ) -> None:
        self.count = count
        self._provision = provision
        self._remove = remove
        self._has_room = has_room
        self._pool: list[Session] = []

    def sessions(self) -> list[Session]:
        return list(self._pool)

    def holds(self, session: Session) -> bool:
        return any(warm is session for warm in self._pool)

    def fill(self) -> None:
        """Start agents until the pool is full or --max-agents is reached."""
        while len(self._pool) < self.count and self._has_room():
            try:
                session = self._provision()
            except OSError as e:
                self.log.error("cannot prepare a warm agent: {error}", error=str(e))
                return
            self._pool.append(session)
            session.lifecycle.want().addErrback(self._start_failed, session)

    def take(self) -> Session | None:
        """A warm session (its agent running or still starting) out of the pool, or None."""
        for session in self._pool:
            if session.lifecycle.status in USABLE:
                self._pool.remove(session)
                return session
        return None

    async def discard(self, session: Session) -> None:
        if self.holds(session):
            self._pool.remove(session)
            await self._remove(session)

    def stop_idle(self, horizon: float) -> None:
        for session in list(self._pool):
            if session.last_used < horizon:
                self.log.info("stopping an idle warm agent")
                self._discarded(self.discard(session))

    async def close(self) -> None:
        for session in list(self._pool):
            await self.discard(session)

    def _start_failed(self, failure, session: Session) -> None:
        # Not retried until the pool is filled again (a client connecting, a create): a pi
        # that cannot start must not be restarted in a loop for nobody.
        self.log.warn("a warm agent did not start: {error}", error=failure.getErrorMessage())
        self._discarded(self.discard(session))

    def _discarded(self, discarding) -> None:
        defer.ensureDeferred(discarding).addErrback(
            lambda f: self.log.failure("could not remove a warm agent", f)
        )
