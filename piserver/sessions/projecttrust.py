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

from automat import MethodicalMachine
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
    """``policy`` a ``TrustPolicy``; ``timeout`` seconds the question stays on offer.

    Its stages, for one session: nothing open (``quiet``) ─an agent started in a folder
    that needs an answer→ ``asking`` ─no, dismissed or unanswered→ ``quiet``; ─yes→
    ``quiet`` with the agent restarted, or, when a run goes on, ``restart_due`` ─the run
    ended→ ``quiet`` with the agent restarted. The answer itself is the session's
    (``TrustHost.remember``), so it outlives this object and the server."""

    _machine = MethodicalMachine()
    log = Logger()

    def __init__(
        self, session_id: str, host: TrustHost, policy: TrustPolicy, timeout: float
    ) -> None:
        self._session_id = session_id
        self._host = host
        self._policy = TrustPolicy(policy)
        self._timeout = timeout

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
        the folder has some and nobody answered yet (unless a question is open)."""
        if self._policy is not TrustPolicy.ASK or self._host.remembered() is not None:
            return
        found = trust_resources(self._host.cwd())
        if found:
            self._needs_answer(found)

    @_machine.input()
    def run_ended(self):
        "A run of the session's agent ended."

    # -- the rest of the machine ------------------------------------------------

    @_machine.state(initial=True)
    def quiet(self):
        "No question open, no restart due."

    @_machine.state()
    def asking(self):
        "The question is on offer to the session's clients."

    @_machine.state()
    def restart_due(self):
        "Trusted during a run: the agent restarts once it ends."

    @_machine.input()
    def _needs_answer(self, found: tuple[str, ...]):
        "The agent started in a folder with pi configuration, and nobody answered yet."

    @_machine.input()
    def _trusted(self):
        "A person said yes while no run goes on."

    @_machine.input()
    def _trusted_during_run(self):
        "A person said yes while a run goes on."

    @_machine.input()
    def _not_trusted(self):
        "A person said no, dismissed the question, or nobody answered in time."

    @_machine.output()
    def _ask(self, found: tuple[str, ...]):
        self.log.info(
            "session {session_id}: its folder has pi configuration ({found}): asking whether "
            "to trust it",
            session_id=self._session_id,
            found=", ".join(found),
        )
        dialog = trust_dialog(str(uuid.uuid4()), self._host.cwd(), found, self._timeout)
        self._host.ask(dialog, self._answered, self._expired)

    @_machine.output()
    def _restart(self):
        self._host.restart_agent()

    quiet.upon(_needs_answer, enter=asking, outputs=[_ask])
    asking.upon(_trusted, enter=quiet, outputs=[_restart])
    asking.upon(_trusted_during_run, enter=restart_due, outputs=[])
    asking.upon(_not_trusted, enter=quiet, outputs=[])
    restart_due.upon(run_ended, enter=quiet, outputs=[_restart])
    # Every input has a transition in every state: where one means nothing (a question
    # is open already, no restart is due, no question is open) it is ignored, on purpose.
    for _state in (asking, restart_due):
        _state.upon(_needs_answer, enter=_state, outputs=[])
    for _state in (quiet, asking):
        _state.upon(run_ended, enter=_state, outputs=[])
    for _state in (quiet, restart_due):
        for _input in (_trusted, _trusted_during_run, _not_trusted):
            _state.upon(_input, enter=_state, outputs=[])
    del _state, _input

    # -- what the clients said ----------------------------------------------------

    def _answered(self, response: dict) -> None:
        if "cancelled" in response:
            # Dismissed: not a decision; the next agent asks again.
            self._not_trusted()
            return
        trusted = response.get("confirmed") is True
        self.log.info(
            "session {session_id}: project trust {answer}",
            session_id=self._session_id,
            answer="granted: the agent restarts with the folder's pi configuration"
            if trusted
            else "refused",
        )
        self._host.remember(trusted)
        if not trusted:
            self._not_trusted()
        elif self._host.streaming():
            self._trusted_during_run()
        else:
            self._trusted()

    def _expired(self) -> None:
        self.log.info(
            "session {session_id}: nobody answered the project trust question: not trusted",
            session_id=self._session_id,
        )
        self._not_trusted()


class TrustRestarts(SessionObserver):
    """Restarts an agent trusted during a run once the run is over."""

    def run_ended(self, session, outcome, summary) -> None:
        if session.trust is not None:
            session.trust.run_ended()
