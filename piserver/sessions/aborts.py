"""
``abort``: the run ends, whatever pi is busy with.

pi answers ``abort`` only once it is idle (``session.abort()`` waits for it). While it is
still preparing a prompt (a prompt's images are decoded and resized before the run
starts: thousands take minutes) its abort signal reaches nothing and the answer waits for
all of that, so the run would go on. When pi has not answered within
``ABORT_ANSWER_TIMEOUT`` the server stops the process at once instead (its conversation
is in pi's session file: the next agent resumes it), tells the session's clients the run
ended (``agent_end``, ``agent_settled`` with ``aborted``), and starts the agent again if
someone is attached.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable
from typing import Protocol

from twisted.logger import Logger

from piserver.agents.protocol import AgentProtocol
from piserver.common.errors import AgentExited, AgentTimeout
from piserver.sessions.session import Session

ABORT_ANSWER_TIMEOUT = 3.0
"""Seconds pi has to answer ``abort`` (it does in milliseconds when a run can stop)."""

log = Logger()

# The agents an abort is stopping (so a second abort at the same time ends nothing twice).
_stopping: weakref.WeakSet = weakref.WeakSet()


class AbortHost(Protocol):
    """What aborting a run asks of the session manager."""

    def command(self, session: Session, command: str, /, timeout: float | None = None) -> Awaitable:
        """Send pi ``command`` (starting the agent if need be); its answer."""

    def publish(self, session: Session, event_type: str, payload: dict) -> None:
        """Number, journal and send an event of ``session``."""

    def kill_agent(self, agent: AgentProtocol) -> Awaitable:
        """Stop ``agent`` at once (no ``abort``, no grace); fires once it has exited."""

    def run_ended(self, session: Session) -> None:
        """The run is over: what follows one (a code session's changed files)."""


async def abort_run(
    host: AbortHost, session: Session, timeout: float = ABORT_ANSWER_TIMEOUT
) -> dict:
    """Abort ``session``'s run: ``{}`` when pi stopped it, ``{"agentStopped": true}``
    when the server had to stop pi to end it."""
    asked = session.agent
    try:
        await host.command(session, "abort", timeout=timeout)
        return {}
    except AgentExited:
        if asked is not None and asked in _stopping:
            # Another abort is stopping the agent this one asked: the run ends there.
            return {"agentStopped": True}
        raise
    except AgentTimeout:
        agent = session.agent
        if agent is None or agent.exit is not None:
            return {}
        if agent in _stopping:
            # Another abort timed out too and is stopping it: one end of the run.
            return {"agentStopped": True}
        _stopping.add(agent)
    log.warn(
        "session {session_id}: pi did not answer abort within {timeout:g} s (still preparing "
        "a prompt?); its agent is stopped to end the run",
        session_id=session.id,
        timeout=timeout,
    )
    await host.kill_agent(agent)
    # What the clients wait for: the run is over, aborted (pi says it so for an abort).
    session.streaming = False
    session.calls.agent_exited()
    error = {
        "code": "aborted",
        "message": f"aborted: pi did not stop within {timeout:g} s, so its agent was stopped",
    }
    host.publish(
        session,
        "agent_end",
        {"type": "agent_end", "messages": [], "success": False, "error": error},
    )
    host.publish(session, "agent_settled", {"type": "agent_settled", "aborted": True})
    host.run_ended(session)
    if session.stream.connections():
        # Someone is looking: have the agent (and its conversation) back at once.
        session.lifecycle.want().addErrback(
            lambda f: log.error(
                "the agent of {session_id} did not restart: {error}",
                session_id=session.id,
                error=f.getErrorMessage(),
            )
        )
    return {"agentStopped": True}
