"""
Warm agents: pi processes started ahead of the sessions they will serve.

A cold pi takes hundreds of milliseconds to start; a warm one is already running in the
directories of the next chat session (its working directory, pi's session dir), so
``session.create`` only hands it over. What a client chooses at create time reaches it at
run time: the system prompt and native tools through the server's pi extension, the model
by ``set_model``.

A warm agent started before pi's configuration in the data dir changed (settings, models,
extensions) is not handed over: it would not behave as a new agent. It is stopped, and
the create starts a cold one.

Warm agents count against ``--max-agents`` and are the first to go when room is needed;
they never make a session's agent go. Like a session's, a warm agent unused for
``--agent-idle-timeout`` is stopped: an idle server holds no pi processes. The pool fills
again when a client connects.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from piserver.sessions.session import Session

DEFAULT_WARM_AGENTS = 1


class WarmHost(Protocol):
    """What ``WarmAgents`` asks of its supply (``warmsupply.WarmSupply``)."""

    def provision_warm(self) -> Session:
        """A new provisional chat session (its directories, stream and lifecycle)."""

    def discard_warm(self, session: Session) -> Awaitable[None]:
        """Undo a provisional session."""

    def has_room(self) -> bool:
        """Another agent fits under --max-agents."""

    def configuration(self) -> object:
        """A fingerprint of what pi reads at start (its settings, models, extensions)."""


class WarmAgents:
    """A pool of ``count`` provisional chat sessions whose agents start ahead; ``host`` is
    a ``WarmHost``."""

    log = Logger()

    def __init__(
        self,
        count: int,
        host: WarmHost,
    ) -> None:
        self.count = count
        self._host = host
        self._pool: list[Session] = []
        # The configuration each warm agent started with.
        self._started_with: dict[str, object] = {}

    def sessions(self) -> list[Session]:
        return list(self._pool)

    def holds(self, session: Session) -> bool:
        return any(warm is session for warm in self._pool)

    def fill(self) -> None:
        """Start agents until the pool is full or --max-agents is reached."""
        while len(self._pool) < self.count and self._host.has_room():
            try:
                session = self._host.provision_warm()
            except OSError as e:
                self.log.error("cannot prepare a warm agent: {error}", error=str(e))
                return
            self._pool.append(session)
            self._started_with[session.id] = self._host.configuration()
            session.lifecycle.want().addCallbacks(
                self._started,
                self._start_failed,
                callbackArgs=(session,),
                errbackArgs=(session,),
            )

    def take(self) -> Session | None:
        """A warm session (its agent running or still starting) out of the pool, or None."""
        configuration = self._host.configuration()
        for session in list(self._pool):
            if self._started_with.get(session.id) != configuration:
                self.log.info("stopping a warm agent: pi's configuration changed since it started")
                self._discarded(self.discard(session))
            elif session.lifecycle.status.can_be_handed_over:
                self._pool.remove(session)
                self._started_with.pop(session.id, None)
                return session
        return None

    async def discard(self, session: Session) -> None:
        if self.holds(session):
            self._pool.remove(session)
            self._started_with.pop(session.id, None)
            await self._host.discard_warm(session)

    def stop_idle(self, horizon: float) -> None:
        for session in list(self._pool):
            if session.last_used < horizon:
                self.log.info("stopping an idle warm agent")
                self._discarded(self.discard(session))

    async def close(self) -> None:
        for session in list(self._pool):
            await self.discard(session)

    def _started(self, agent, session: Session) -> None:
        agent.exited.addCallback(self._exited, session)

    def _exited(self, exit, session: Session) -> None:
        if self.holds(session):
            # It died waiting (a stop the pool asked for takes it out of the pool first).
            self.log.warn("a warm agent exited: {exit}", exit=exit.describe())
            self._discarded(self.discard(session))

    def _start_failed(self, failure, session: Session) -> None:
        # Not retried until the pool is filled again (a client connecting, a create): a pi
        # that cannot start must not be restarted in a loop for nobody. (One the pool
        # discarded while it started is out of the pool already.)
        if self.holds(session):
            self.log.warn("a warm agent did not start: {error}", error=failure.getErrorMessage())
            self._discarded(self.discard(session))

    def _discarded(self, discarding) -> None:
        defer.ensureDeferred(discarding).addErrback(
            lambda f: self.log.failure("could not remove a warm agent", f)
        )
