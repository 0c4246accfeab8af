"""
A session's live parts, given to it when it is restored or made: its journal and event
stream, its device calls, its approvals, its project trust and its agent's lifecycle. Each
part reaches the rest of the server through the session manager, a ``PartsHost``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from piserver.sessions.agents import SessionAgents
from piserver.sessions.approvals import Approvals
from piserver.sessions.devicecalls import DeviceCalls
from piserver.sessions.journal import Journal
from piserver.sessions.observer import SessionObservers
from piserver.sessions.permissions import Permissions
from piserver.sessions.projecttrust import ProjectTrust
from piserver.sessions.session import Session
from piserver.sessions.settings import SessionSettings
from piserver.sessions.stream import EventStream


class PartsHost(Protocol):
    """What a session's live parts ask of the session manager."""

    def publish(
        self, session: Session, event_type: str, payload: dict, payload_json=None, to=None
    ) -> None:
        """Number, journal and send an event of ``session``."""

    def save(self, session: Session) -> None:
        """Write the session's record."""

    def prompt(
        self, session: Session, message: str, images=None, streaming_behavior=None
    ) -> Awaitable[dict]:
        """Send the agent a prompt."""

    def event_sent(self, mode: str, size: int) -> None:
        """An event frame of ``size`` bytes went out in event mode ``mode``."""


class SessionParts:
    """Equips sessions. ``reactor`` provides IReactorTime; ``observers`` hear of device
    calls and approvals; ``agents`` gives each session its agent's lifecycle."""

    def __init__(
        self,
        reactor,
        settings: SessionSettings,
        host: PartsHost,
        observers: SessionObservers,
        agents: SessionAgents,
    ) -> None:
        self._reactor = reactor
        self._settings = settings
        self._host = host
        self._observers = observers
        self._agents = agents

    def equip(self, session: Session) -> None:
        """Give a session its live parts: event stream, device calls, agent lifecycle."""
        host = self._host
        journal = Journal(
            session.directory / "journal", self._reactor, self._settings.journal_limits
        )
        journal.open()
        journal.continue_after(session.last_seq)
        session.journal = journal
        session.stream = EventStream(
            session.id,
            journal,
            self._reactor,
            self._settings.merge_window,
            on_sent=host.event_sent,
        )
        session.calls = DeviceCalls(
            session.id,
            self._reactor,
            lambda event_type, payload, to=None: host.publish(session, event_type, payload, to=to),
            lambda message: session.agent.send(message) if session.agent else None,
            session.stream.connections,
            self._settings.native_tool_timeout,
            observer=self._observers,
            session=session,
        )
        session.approvals = Approvals(
            session.id,
            self._reactor,
            _ApprovalHost(host, self._observers, session),
            session.directory,
            self._settings.approval_timeout,
        )
        session.approvals.load()
        session.trust = ProjectTrust(
            session.id,
            _TrustHost(host, self._agents, session),
            self._settings.project_trust,
            self._settings.project_trust_timeout,
        )
        self._agents.equip(session)


class _ApprovalHost:
    """A session's side of its approvals (see approvals.ApprovalHost)."""

    log = Logger()

    def __init__(self, host: PartsHost, observers: SessionObservers, session: Session) -> None:
        self._host = host
        self._observers = observers
        self._session = session

    def publish(self, event_type: str, payload: dict, to=None) -> None:
        self._host.publish(self._session, event_type, payload, to=to)

    def send_to_agent(self, message: dict) -> None:
        if self._session.agent is not None:
            self._session.agent.send(message)

    def connections(self) -> list:
        return self._session.stream.connections()

    def permissions(self) -> Permissions:
        return self._session.permissions

    def cwd(self) -> str:
        return str(self._session.cwd)

    def permissions_changed(self) -> None:
        self._host.save(self._session)

    def waiting_for_person(self, waiting: bool) -> None:
        if self._session.agent is not None:
            self._session.agent.waiting_for_person = waiting

    def agent_stopping(self) -> bool:
        agent = self._session.agent
        return agent is not None and agent.stop_requested

    def tell_agent_later(self, text: str) -> None:
        session = self._session
        behavior = "followUp" if session.streaming else None
        told = defer.ensureDeferred(self._host.prompt(session, text, None, behavior))
        told.addErrback(
            lambda f: self.log.error(
                "session {session_id}: a late approval answer did not reach the agent: {error}",
                session_id=session.id,
                error=f.getErrorMessage(),
            )
        )

    def requested(self, request) -> None:
        self._observers.approval_requested(self._session, request)


class _TrustHost:
    """A session's side of its project trust (see projecttrust.TrustHost)."""

    def __init__(self, host: PartsHost, agents: SessionAgents, session: Session) -> None:
        self._host = host
        self._agents = agents
        self._session = session

    def cwd(self) -> str:
        return str(self._session.cwd)

    def remembered(self) -> bool | None:
        return self._session.project_trust

    def remember(self, trusted: bool) -> None:
        self._session.project_trust = trusted
        self._host.save(self._session)

    def ask(self, dialog, answered, expired) -> None:
        self._session.calls.ask(dialog, answered, expired)

    def streaming(self) -> bool:
        return self._session.streaming

    def restart_agent(self) -> None:
        self._agents.restart(self._session)
