"""
What a session's agent says, relayed: each pi event updates the session (a run going on,
its name), goes to its approvals or device calls when it is theirs, or is published:
numbered, journaled and sent by the session's stream, noted in ``state.json``, and read
once for runs (``observer.RunWatcher``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

from piserver.agents.protocol import AgentProtocol
from piserver.sessions.observer import RunWatcher, SessionObservers
from piserver.sessions.session import Session, iso_time


class Index(Protocol):
    """The part of ``state.json`` (``index.StateStore``) that events move on."""

    def note_last_seq(self, session_id: str, seq: int) -> None: ...

    def touch(self, session_id: str, last_activity_at: str) -> None: ...


class Renamer(Protocol):
    """The session manager, which saves a session pi renamed."""

    def rename(self, session: Session, name: str | None) -> None: ...


class EventRelay:
    """``reactor`` provides IReactorTime; ``on_run_end(session)`` hears of a code
    session's run ending (what its files became)."""

    log = Logger()

    def __init__(
        self,
        reactor,
        store: Index,
        observers: SessionObservers,
        renamer: Renamer,
        on_run_end: Callable[[Session], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._store = store
        self._renamer = renamer
        self._on_run_end = on_run_end
        self._runs = RunWatcher(observers)

    def agent_event(self, session: Session, agent: AgentProtocol, event: dict, raw: bytes):
        if session.agent is not agent:
            return
        event_type = event.get("type")
        if not isinstance(event_type, str):
            self.log.warn("agent {session_id} sent an event without a type", session_id=session.id)
            return
        if event_type == "agent_start":
            session.streaming = agent.expect_output = True
        elif event_type == "agent_settled":
            # pi may go on after agent_end (retries, compaction, queued messages): a run is
            # over once pi says it will not continue by itself.
            session.streaming = agent.expect_output = False
        elif event_type == "session_info_changed":
            name = event.get("name")
            self._renamer.rename(
                session, name.strip() if isinstance(name, str) and name.strip() else None
            )
        if session.approvals.agent_event(event) or session.calls.agent_event(event):
            return
        self.publish(session, event_type, event, raw)
        if event_type == "agent_settled":
            self.run_ended(session)

    def run_ended(self, session: Session) -> None:
        """A run of ``session`` is over (pi settled, or the server stopped pi to end it)."""
        if self._on_run_end is not None and session.mode == "code":
            self._on_run_end(session)

    def publish(
        self,
        session: Session,
        event_type: str,
        payload: dict,
        payload_json: bytes | None = None,
        to=None,
    ) -> None:
        """Number, journal and send an event (pi's, relayed as ``payload_json``, or ours)."""
        session.stream.publish(event_type, payload, payload_json, to=to)
        # The stream's seq, not the event's: publishing can add one (journal_stopped).
        self._store.note_last_seq(session.id, session.stream.seq)
        if event_type != "message_update":  # (the per-token updates say nothing of runs)
            self._runs.event(session, event_type, payload)
        now = session.last_used = self._reactor.seconds()
        # lastActivityAt has a resolution of seconds: format it once a second, not per event.
        if now - session.activity_noted >= 1.0:
            session.activity_noted = now
            session.last_activity_at = iso_time(now)
            self._store.touch(session.id, session.last_activity_at)
