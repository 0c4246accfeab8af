"""
One session's approval requests: tool calls its permission mode puts to a person.

The gate in the server's pi extension asks about every call outside ``full`` mode
(``agents/gate.py``). :class:`Approvals` decides with the session's
:class:`~.permissions.Permissions`; a call that needs a person becomes an
``approval_request`` event, answered by ``approval.respond`` (or a signed action URL):
the first answer wins and goes to pi, and ``approval_resolved`` tells everyone (the
others take it as the withdrawal). Both events are journalled: the session's history of
decisions. Pending requests are re-sent to a device that attaches or resumes, are kept in
``approvals.json`` in the session's directory (atomically) and time out (denied).

When the agent that asked is gone (a crash, a server restart) the request stays on offer;
its answer then reaches the next agent of the session as a message: an ``allow`` lets that
exact call run once when the model makes it again.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Protocol

import attr
from twisted.logger import Logger

from piserver.agents.gate import GatedCall, allow_response, block_response, parse_gated_call
from piserver.agents.nativetools import ended_tool_call_id
from piserver.common import params as check
from piserver.common.errors import InvalidParams, NotFound
from piserver.common.files import CorruptFileError, load_json, write_json_atomic
from piserver.sessions.permissions import Permissions, Verdict, grant_for, rule_for, summary
from piserver.sessions.session import iso_time

DECISIONS = ("allow", "deny", "allow_session", "allow_rule")
DEFAULT_APPROVAL_TIMEOUT = 600.0
# Strings of a call's input longer than this are cut in the event (a write's whole file
# would be journalled and sent to every client); the summary says what the call does.
EVENT_STRING_LIMIT = 16_000
APPROVALS_FILE = "approvals.json"
MAX_REASON = 2000


class ApprovalHost(Protocol):
    """What :class:`Approvals` needs of its session."""

    def publish(self, event_type: str, payload: dict, to=None) -> None: ...
    def send_to_agent(self, message: dict) -> None: ...
    def connections(self) -> list: ...
    def permissions(self) -> Permissions: ...
    def cwd(self) -> str: ...
    def permissions_changed(self) -> None: ...
    def waiting_for_person(self, waiting: bool) -> None: ...
    def agent_stopping(self) -> bool: ...
    def tell_agent_later(self, text: str) -> None: ...
    def requested(self, request: ApprovalRequest) -> None: ...


@attr.s(eq=False)
class ApprovalRequest:
    """A gated call waiting for a person. ``live`` while the agent that asked still waits
    for ``request_id``'s answer."""

    approval_id: str = attr.ib()
    request_id: str = attr.ib()
    tool_call_id: str = attr.ib()
    tool_name: str = attr.ib()
    summary: str = attr.ib()
    input: dict = attr.ib()
    expires: float = attr.ib()
    live: bool = attr.ib(default=True)
    timer: object = attr.ib(default=None)

    def event(self) -> dict:
        return {
            "type": "approval_request",
            "approvalId": self.approval_id,
            "toolName": self.tool_name,
            "summary": self.summary,
            "input": _clipped(self.input),
            "expiresAt": iso_time(self.expires),
        }

    def to_json(self) -> dict:
        return {
            "approvalId": self.approval_id,
            "requestId": self.request_id,
            "toolCallId": self.tool_call_id,
            "toolName": self.tool_name,
            "summary": self.summary,
            "input": self.input,
            "expires": self.expires,
        }

    @classmethod
    def from_json(cls, record: dict) -> ApprovalRequest:
        return cls(
            approval_id=str(record["approvalId"]),
            request_id=str(record["requestId"]),
            tool_call_id=str(record["toolCallId"]),
            tool_name=str(record["toolName"]),
            summary=str(record["summary"]),
            input=dict(record["input"]),
            expires=float(record["expires"]),
            live=False,
        )


def _clipped(value):
    if isinstance(value, str) and len(value) > EVENT_STRING_LIMIT:
        return value[: EVENT_STRING_LIMIT - 1] + "…"
    if isinstance(value, dict):
        return {key: _clipped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clipped(item) for item in value]
    return value


def parse_response(params: dict) -> tuple[str, str, str | None]:
    """``approval.respond`` params: ``(approvalId, decision, reason)``."""
    approval_id = params.get("approvalId")
    if not isinstance(approval_id, str) or not approval_id:
        raise InvalidParams('missing "approvalId" (a string)')
    decision = check.choice(
        params,
        "decision",
        DECISIONS,
        message='"decision" must be "allow", "deny", "allow_session" or "allow_rule"',
        required=True,
    )
    reason = params.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise InvalidParams(f'"reason" must be a string of at most {MAX_REASON} characters')
    # The reason is written to the journal and shown to other devices: text.
    return approval_id, decision, check.check_text(reason, "reason") if reason else None


class Approvals:
    log = Logger()

    def __init__(self, session_id: str, clock, host: ApprovalHost, directory: Path, timeout: float):
        self._session_id = session_id
        self._clock = clock
        self._host = host
        self._path = Path(directory) / APPROVALS_FILE
        self.timeout = timeout
        self._pending: dict[str, ApprovalRequest] = {}
        # Calls allowed after their agent was gone: each runs once when made again.
        self._once: list[tuple[str, dict]] = []

    # -- from the agent -----------------------------------------------------

    def agent_event(self, event: dict) -> bool:
        """Handle an event that is ours; True when it must not be relayed."""
        call = parse_gated_call(event)
        if call is not None:
            self._gated(call)
            return True
        tool_call_id = ended_tool_call_id(event)
        # An agent being stopped (the server stops, idles...) aborts its run: the request
        # stays on offer for the next agent, unlike a run a person aborted.
        if tool_call_id is not None and not self._host.agent_stopping():
            for request in list(self._pending.values()):
                if request.live and request.tool_call_id == tool_call_id:
                    # pi gave up on the call (the run was aborted): nobody needs to answer.
                    self._resolve(request, "deny", "pi-server", "the run was aborted")
        return False

    def _gated(self, call: GatedCall) -> None:
        once = (call.tool_name, call.input)
        if once in self._once:
            self._once.remove(once)
            self._host.send_to_agent(allow_response(call.request_id))
            return
        verdict, reason = self._host.permissions().decide(
            call.tool_name, call.input, self._host.cwd()
        )
        if verdict is Verdict.ALLOW:
            self._host.send_to_agent(allow_response(call.request_id))
        elif verdict is Verdict.BLOCK:
            self._host.send_to_agent(block_response(call.request_id, reason))
        else:
            self._ask(call)

    def _ask(self, call: GatedCall) -> None:
        request = ApprovalRequest(
            approval_id=str(uuid.uuid4()),
            request_id=call.request_id,
            tool_call_id=call.tool_call_id,
            tool_name=call.tool_name,
            summary=summary(call.tool_name, call.input),
            input=call.input,
            expires=self._clock.seconds() + self.timeout,
        )
        self.log.info(
            "session {session_id}: approval {approval_id} requested for {tool}",
            session_id=self._session_id,
            approval_id=request.approval_id,
            tool=call.tool_name,
        )
        self._offer(request)
        self._host.requested(request)

    def _offer(self, request: ApprovalRequest) -> None:
        delay = max(0.0, request.expires - self._clock.seconds())
        request.timer = self._clock.callLater(delay, self._expired, request.approval_id)
        self._pending[request.approval_id] = request
        self._save()
        self._host.waiting_for_person(True)
        self._host.publish("approval_request", request.event())

    def _expired(self, approval_id: str) -> None:
        request = self._pending.get(approval_id)
        if request is not None:
            reason = (
                f"no one answered the approval request within {self.timeout:g} s, so the "
                f"{request.tool_name} call was denied"
            )
            self._resolve(request, "deny", "timeout", reason, tell_late=False)

    def agent_exited(self) -> None:
        """The agent is gone: pending requests stay on offer, answered by a message."""
        for request in self._pending.values():
            request.live = False
        self._host.waiting_for_person(False)

    # -- from people --------------------------------------------------------

    def respond(self, by: str, approval_id: str, decision: str, reason: str | None) -> None:
        request = self._pending.get(approval_id)
        if request is None:
            raise NotFound(f"no pending approval {approval_id[:80]!r}")
        if decision == "allow_session":
            self._host.permissions().grants.append(grant_for(request.tool_name, request.input))
            self._host.permissions_changed()
        elif decision == "allow_rule":
            self._host.permissions().rules.append(rule_for(request.tool_name, request.input))
            self._host.permissions_changed()
        self._resolve(request, decision, by, reason)

    def reconsider(self, by: str) -> None:
        """The session's mode or rules changed (by ``by``): a waiting call they now allow
        runs, one they block is denied; the others still wait."""
        for request in list(self._pending.values()):
            verdict, reason = self._host.permissions().decide(
                request.tool_name, request.input, self._host.cwd()
            )
            if verdict is Verdict.ALLOW:
                self._resolve(request, "allow", by, "allowed by the new permission mode")
            elif verdict is Verdict.BLOCK:
                self._resolve(request, "deny", by, reason)

    def _resolve(
        self, request, decision: str, by: str, reason: str | None, tell_late: bool = True
    ) -> None:
        del self._pending[request.approval_id]
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        self._save()
        allowed = decision != "deny"
        if request.live:
            denial = f"the person denied this {request.tool_name} call" + (
                f": {reason}" if reason else ""
            )
            answer = reason if by in ("timeout", "pi-server") else denial
            self._host.send_to_agent(
                allow_response(request.request_id)
                if allowed
                else block_response(request.request_id, answer)
            )
        elif tell_late:
            self._tell_late(request, allowed, reason)
        if not any(r.live for r in self._pending.values()):
            self._host.waiting_for_person(False)
        self.log.info(
            "session {session_id}: approval {approval_id} {decision} by {by}",
            session_id=self._session_id,
            approval_id=request.approval_id,
            decision=decision,
            by=by,
        )
        payload = {
            "type": "approval_resolved",
            "approvalId": request.approval_id,
            "decision": decision,
            "by": by,
        }
        if reason:
            payload["reason"] = reason
        self._host.publish("approval_resolved", payload)

    def _tell_late(self, request: ApprovalRequest, allowed: bool, reason: str | None) -> None:
        if allowed:
            self._once.append((request.tool_name, request.input))
            text = (
                f"[pi-server] Your {request.tool_name} call ({request.summary}) was interrupted "
                "before anyone answered; the person has now allowed it. Make the same call "
                "again to run it."
            )
        else:
            text = (
                f"[pi-server] The person denied your earlier {request.tool_name} call "
                f"({request.summary})" + (f": {reason}" if reason else ".")
            )
        self._host.tell_agent_later(text)

    # -- devices, restarts --------------------------------------------------

    def attached(self, connection) -> None:
        """Send what is still waiting to a connection that just attached or resumed."""
        for request in self._pending.values():
            self._host.publish("approval_request", request.event(), to={connection.connection_id})

    def close(self) -> None:
        """The session is going: its requests' timers stop (nobody answers them now)."""
        for request in self._pending.values():
            if request.timer is not None and request.timer.active():
                request.timer.cancel()
        self._pending.clear()

    def pending(self) -> list[ApprovalRequest]:
        return list(self._pending.values())

    def get(self, approval_id: str) -> ApprovalRequest | None:
        return self._pending.get(approval_id)

    def __contains__(self, approval_id: str) -> bool:
        return approval_id in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def _save(self) -> None:
        if self._pending or self._path.exists():
            write_json_atomic(self._path, [r.to_json() for r in self._pending.values()])

    def load(self) -> None:
        """Take back the requests a previous server left pending (its agent is gone)."""
        try:
            records = load_json(self._path, self.log, expected_type=list) or []
        except (CorruptFileError, OSError) as e:
            self.log.error("{path}: {error}", path=str(self._path), error=str(e))
            return
        for record in records:
            try:
                request = ApprovalRequest.from_json(record)
            except (KeyError, TypeError, ValueError):
                self.log.warn("{path}: an unreadable request skipped", path=str(self._path))
                continue
            delay = max(0.0, request.expires - self._clock.seconds())
            request.timer = self._clock.callLater(delay, self._expired, request.approval_id)
            self._pending[request.approval_id] = request
