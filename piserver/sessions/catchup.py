"""
Catching a connection up as it attaches to a session: it goes live at once, gets every
event after the ``last_seq`` it had (replayed from the journal), or, when the journal no
longer has them, a ``session_snapshot`` of the conversation asked of the agent.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Protocol

from piserver.agents.models import public_state
from piserver.sessions.session import Session


class CaughtUp(enum.StrEnum):
    """How an attaching connection was caught up (what ``session.attach`` answers)."""

    LIVE = "live"
    REPLAYED = "replayed"
    SNAPSHOT = "snapshot"


class AgentCommands(Protocol):
    """The part of the session manager a snapshot asks the agent through."""

    def command(self, session: Session, command: str, /, timeout=None, **fields) -> Awaitable:
        """Send the session's agent a command (starting it if need be); its answer data."""


class CatchUp:
    """``in_thread(f, *args)`` reads the journal off the reactor thread."""

    def __init__(self, agent: AgentCommands, in_thread: Callable[..., Awaitable]) -> None:
        self._agent = agent
        self._in_thread = in_thread

    async def attach(self, connection, session: Session, last_seq: int | None) -> CaughtUp:
        """Attach ``connection`` to the session's events, caught up after ``last_seq``."""
        mode = connection.event_mode
        reason = await session.stream.attach_catching_up(
            connection,
            mode,
            last_seq,
            self._in_thread,
            snapshots="snapshots" in connection.features,
        )
        if reason is None:
            self._attached(connection, session)
            if last_seq is None or last_seq == session.stream.seq:
                return CaughtUp.LIVE
            return CaughtUp.REPLAYED
        # Events that come while the agent is asked are sent after the snapshot.
        session.stream.hold(connection, mode)
        try:
            state = await self._agent.command(session, "get_state")
            messages = await self._agent.command(session, "get_messages")
        except BaseException:
            session.stream.detach(connection)
            raise
        session.stream.release(
            connection,
            {
                "type": "session_snapshot",
                "reason": reason,
                "messages": (messages or {}).get("messages", []),
                "state": public_state(state or {}),
                "streamingMessage": session.stream.streaming_message,
            },
            session.stream.seq,
        )
        self._attached(connection, session)
        return CaughtUp.SNAPSHOT

    def _attached(self, connection, session: Session) -> None:
        # Pending device calls and approvals are offered to the newcomer.
        session.calls.attached(connection)
        session.approvals.attached(connection)
