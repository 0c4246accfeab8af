"""
One session's answer to pi's project trust (``agents/projecttrust.py``): whether its agent
loads the configuration its folder brings (``.pi/extensions``...).

Under ``--project-trust ask`` (the default) an agent starts at once, without it
(``--no-approve``); when the folder has any, the session's clients are asked, with an
extension ``confirm`` dialog they already show (re-sent to a device that attaches, withdrawn
after ``--project-trust-timeout``). A yes is kept in the session's record and the agent is
restarted with ``--approve`` as soon as no run goes on (its conversation goes on); a no is
kept too; no answer changes nothing, and the next agent of the session asks again. Nobody
is kept waiting: a create, a prompt, the seed's app that knows no dialog, a script with no
client at all get the server's default at once, which is "not trusted": what the folder
brings runs code in the agent before any prompt and outside the permission gate, and
nobody has looked at it.

``always`` and ``never`` decide without asking. The decision is never pi's to keep (no
``trust.json``): the agent dir is writable in the sandbox, and the agent must not trust
itself.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from twisted.logger import Logger

from piserver.agents.projecttrust import TrustPolicy, trust_args, trust_dialog, trust_resources
from piserver.sessions.observer import SessionObserver


class TrustHost(Protocol):
    """What a session's project trust asks of its session."""

    def cwd(self) -> str: ...
    def remembered(self) -> bool | None:
        """A person's answer kept for the session (None: none yet)."""

    def remember(self, trusted: bool) -> None:
        """Keep a person's answer in the session's record."""

    def ask(self, dialog, answered, expired) -> None:
        """Put a dialog to the session's clients (``DeviceCalls.ask``)."""

    def streaming(self) -> bool:
        """A run goes on."""

    def restart_agent(self) -> None:
        """Stop the running agent and start it again (the same conversation)."""


class ProjectTrust:
    """``policy`` a ``TrustPolicy``; ``timeout`` seconds the question stays on offer."""

    log = Logger()

    def __init__(
        self, session_id: str, host: TrustHost, policy: TrustPolicy, timeout: float
    ) -> None:
        self._session_id = session_id
        self._host = host
        self._policy = TrustPolicy(policy)
        self._timeout = timeout
        self._asking: str | None = None
        # A yes came during a run: the agent restarts once it ends.
        self._restart_after_run = False

    def trusted(self) -> bool:
        if self._policy is TrustPolicy.ALWAYS:
            return True
        if self._policy is TrustPolicy.NEVER:
            return False
        return self._host.remembered() is True

    def agent_args(self) -> list[str]:
        """What the next agent is started with."""
        return trust_args(self.trusted())

    def agent_started(self) -> None:
        """An agent started (without the folder's configuration unless trusted): ask when
        the folder has some, nobody answered yet, and no question is open."""
        if self._policy is not TrustPolicy.ASK or self._asking is not None:
            return
        if self._host.remembered() is not None:
            return
        found = trust_resources(self._host.cwd())
        if not found:
            return
        self._asking = dialog_id = str(uuid.uuid4())
        self.log.info(
            "session {session_id}: its folder has pi configuration ({found}): asking whether "
            "to trust it",
            session_id=self._session_id,
            found=", ".join(found),
        )
        self._host.ask(
            trust_dialog(dialog_id, self._host.cwd(), found, self._timeout),
            self._answered,
            self._expired,
        )

    def run_ended(self) -> None:
        if self._restart_after_run:
            self._restart_after_run = False
            self._host.restart_agent()

    def _answered(self, response: dict) -> None:
        self._asking = None
        if "cancelled" in response:
            return  # dismissed: not a decision; the next agent asks again
        trusted = response.get("confirmed") is True
        self.log.info(
            "session {session_id}: project trust {answer}",
            session_id=self._session_id,
            answer="granted: the agent restarts with the folder's pi configuration"
            if trusted
            else "refused",
        )
        self._host.remember(trusted)
        if trusted:
            if self._host.streaming():
                self._restart_after_run = True
            else:
                self._host.restart_agent()

    def _expired(self) -> None:
        self._asking = None
        self.log.info(
            "session {session_id}: nobody answered the project trust question: not trusted",
            session_id=self._session_id,
        )


class TrustRestarts(SessionObserver):
    """Restarts an agent trusted during a run once the run is over."""

    def run_ended(self, session, outcome, summary) -> None:
        if session.trust is not None:
            session.trust.run_ended()
