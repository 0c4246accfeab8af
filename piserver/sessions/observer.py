"""
What happens to sessions, told through one typed interface to whoever cares: metrics,
notifications, and features that hook in later (approvals, usage, push).

A run's start, end and outcome are worked out here once, from pi's events
(``RunWatcher``); observers never read pi's event names. To add one, subclass
``SessionObserver`` (every method does nothing), override what it needs, and add it with
``SessionManager.observers.add``. The method names are stable: features rely on them.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

from twisted.logger import Logger

from piserver.sessions.usage import message_usage

if TYPE_CHECKING:
    from piserver.sessions.approvals import ApprovalRequest
    from piserver.sessions.session import Session
    from piserver.sessions.usage import Usage


class RunOutcome(enum.StrEnum):
    """How a run ended (the ``outcome`` label of ``pi_server_runs_ended_total``)."""

    OK = "ok"
    ERROR = "error"
    ABORTED = "aborted"


class InputKind(enum.StrEnum):
    """What the agent waits for from a person."""

    NATIVE_TOOL = "native_tool"  # a call of a tool only a device can run
    DIALOG = "dialog"  # an extension dialog (confirm, select, input...)


class ISessionObserver(Protocol):
    """What an observer hears. Called on the reactor thread; must not block. An exception
    is logged and does not reach the session or the other observers."""

    def run_started(self, session: Session) -> None:
        """The agent began a run (pi's ``agent_start``)."""

    def run_ended(self, session: Session, outcome: RunOutcome, summary: str) -> None:
        """The run is over and pi will not go on by itself (``agent_settled``).
        ``summary``: the run's last assistant text, or what ended it (untrusted text)."""

    def agent_crashed(self, session: Session, code: int | None, signal: str | None) -> None:
        """The session's agent process ended without being asked to."""

    def agent_restarted(self, session: Session) -> None:
        """The agent is being restarted after a crash."""

    def input_needed(self, session: Session, kind: InputKind, detail: str) -> None:
        """The agent waits for a person; ``detail`` says for what, in a sentence."""

    def native_tool_timed_out(self, session: Session, tool: str) -> None:
        """No device answered a native tool call in time."""

    def approval_requested(self, session: Session, request: ApprovalRequest) -> None:
        """A tool call waits for a person's approval (``sessions/approvals.py``)."""

    def usage_reported(self, session: Session, model: str, usage: Usage) -> None:
        """An assistant message ended (pi's ``message_end``) having used ``usage`` of
        ``model`` (``provider/id``). Never told per streamed token."""


class SessionObserver:
    """An ``ISessionObserver`` that does nothing: subclass it and override what you need."""

    def run_started(self, session: Session) -> None:
        pass

    def run_ended(self, session: Session, outcome: RunOutcome, summary: str) -> None:
        pass

    def agent_crashed(self, session: Session, code: int | None, signal: str | None) -> None:
        pass

    def agent_restarted(self, session: Session) -> None:
        pass

    def input_needed(self, session: Session, kind: InputKind, detail: str) -> None:
        pass

    def native_tool_timed_out(self, session: Session, tool: str) -> None:
        pass

    def approval_requested(self, session: Session, request: ApprovalRequest) -> None:
        pass

    def usage_reported(self, session: Session, model: str, usage: Usage) -> None:
        pass


class SessionObservers(SessionObserver):
    """Every observer added, told in the order they were added; itself an observer."""

    log = Logger()

    def __init__(self) -> None:
        self._observers: list[ISessionObserver] = []

    def add(self, observer: ISessionObserver) -> None:
        self._observers.append(observer)

    def remove(self, observer: ISessionObserver) -> None:
        self._observers.remove(observer)

    def _tell(self, method: str, session: Session, *args) -> None:
        for observer in list(self._observers):
            try:
                getattr(observer, method)(session, *args)
            except Exception:
                self.log.failure(
                    "error in an observer of {happening} ({session_id})",
                    happening=method,
                    session_id=getattr(session, "id", None),
                )

    def run_started(self, session):
        self._tell("run_started", session)

    def run_ended(self, session, outcome, summary):
        self._tell("run_ended", session, outcome, summary)

    def agent_crashed(self, session, code, signal):
        self._tell("agent_crashed", session, code, signal)

    def agent_restarted(self, session):
        self._tell("agent_restarted", session)

    def input_needed(self, session, kind, detail):
        self._tell("input_needed", session, kind, detail)

    def native_tool_timed_out(self, session, tool):
        self._tell("native_tool_timed_out", session, tool)

    def approval_requested(self, session, request):
        self._tell("approval_requested", session, request)

    def usage_reported(self, session, model, usage):
        self._tell("usage_reported", session, model, usage)


def assistant_text(message) -> str | None:
    """The text of a pi assistant message (``message_end``), or None."""
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return None
    content = message.get("content")
    if not isinstance(content, list):
        return None
    parts = [
        c.get("text")
        for c in content
        if isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
    ]
    return "".join(parts) or None


def run_outcome(settled: dict) -> RunOutcome:
    """How the run that pi's ``agent_settled`` payload ends came out."""
    if settled.get("aborted"):
        return RunOutcome.ABORTED
    return RunOutcome.ERROR if settled.get("error") else RunOutcome.OK


def run_summary(settled: dict, last_text: str | None) -> str:
    """A sentence on how the run ended: its last assistant text when it went well."""
    error = settled.get("error")
    if settled.get("aborted"):
        return "the run was aborted"
    if isinstance(error, dict):
        return f"the run failed: {error.get('message') or error.get('code')}"
    return last_text or "the run finished"


class RunWatcher:
    """Reads each event a session publishes (pi's, and the server's ``agent_exit``) and
    tells ``observer`` (an ``ISessionObserver``) of runs and crashes."""

    def __init__(self, observer: ISessionObserver) -> None:
        self._observer = observer
        # The last assistant text of each session's run under way, for its summary.
        self._last_text: dict[str, str] = {}

    def event(self, session: Session, event_type: str, payload: dict) -> None:
        if event_type == "agent_start":
            self._observer.run_started(session)
        elif event_type == "message_end":
            text = assistant_text(payload.get("message"))
            if text is not None:
                self._last_text[session.id] = text
            used = message_usage(payload.get("message"))
            if used is not None:
                self._observer.usage_reported(session, *used)
        elif event_type == "agent_settled":
            summary = run_summary(payload, self._last_text.pop(session.id, None))
            self._observer.run_ended(session, run_outcome(payload), summary)
        elif event_type == "agent_exit":
            self._observer.agent_crashed(session, payload.get("code"), payload.get("signal"))
