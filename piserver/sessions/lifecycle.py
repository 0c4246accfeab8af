"""
The agent of one session, as one state machine.

A session outlives its pi process: the process starts when someone needs it, stops when it
has been idle (or to make room for another), restarts after a crash after a growing delay,
and is given up on for a while after too many crashes. Every stage, what moves it on and
what each move does is written down once, in ``AgentLifecycle``'s transitions::

    stopped ─want→ starting ─started→ running ─stop→ stopping ─ended→ stopped
    starting ─start failed→ stopped           stopping ─want→ stopping-to-restart ─ended→ starting
    running ─crashed→ stopped                 stopped ─want (after a crash)→ backing-off → starting
    running/stopped ─crashed too often→ failed ─(the crash window passes)→ stopped
    any stage ─delete→ deleted

What starting a process involves (room under ``--max-agents``, the spawn, the start-up
handshake) and what a crash means to the session's clients belongs to the ``AgentHost``;
this module only decides when.
"""

from __future__ import annotations

import collections
import enum
from typing import Protocol

from automat import MethodicalMachine
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from piserver.agents.protocol import AgentExit, AgentProtocol
from piserver.common.errors import AgentFailed, NotFound
from piserver.common.outcome import SharedOutcome

CRASH_WINDOW = 60.0
CRASH_LIMIT = 5
# Restart delay after the n-th recent crash: 0.5 s, 1 s, 2 s, 4 s.
CRASH_BACKOFF_BASE = 0.5

log = Logger()


class AgentStatus(enum.StrEnum):
    """The stage a session's agent is in (``AgentLifecycle.status``), with what the rest
    of the server asks of it. A ``StrEnum``: it compares equal to, and logs as, its name."""

    STOPPED = "stopped"
    BACKING_OFF = "backing-off"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"
    DELETED = "deleted"

    @property
    def holds_a_place(self) -> bool:
        """A process exists or is being made: it counts under ``--max-agents``."""
        return self in (AgentStatus.STARTING, AgentStatus.RUNNING, AgentStatus.STOPPING)

    @property
    def can_be_handed_over(self) -> bool:
        """A warm agent in this stage can serve a new session (at once or once started)."""
        return self in (AgentStatus.STARTING, AgentStatus.RUNNING)

    @property
    def listed(self) -> str:
        """What ``session.list`` has always said of it: ``starting``, ``running`` or
        ``stopped`` (a stopping agent still runs; a failed or deleted one does not)."""
        if self in (AgentStatus.BACKING_OFF, AgentStatus.STARTING):
            return "starting"
        if self in (AgentStatus.RUNNING, AgentStatus.STOPPING):
            return "running"
        return "stopped"


# The status each state of the machine shows. (Asked to stop, then wanted again, it is
# starting again as far as anyone can tell.)
_STATUS_OF_STATE = {
    "stopped": AgentStatus.STOPPED,
    "backing_off": AgentStatus.BACKING_OFF,
    "starting": AgentStatus.STARTING,
    "running": AgentStatus.RUNNING,
    "stopping": AgentStatus.STOPPING,
    "stopping_to_restart": AgentStatus.STARTING,
    "failed": AgentStatus.FAILED,
    "deleted": AgentStatus.DELETED,
}


class AgentHost(Protocol):
    """What a lifecycle asks of the session it belongs to."""

    async def prepare(self) -> None:
        """Get ready to spawn: room under --max-agents, the agent's files."""

    def spawn(self) -> AgentProtocol:
        """Start the process (its start-up handshake under way) and return it."""

    def started(self, agent: AgentProtocol, state: dict | None) -> None:
        """The agent answered its start-up ``get_state`` with ``state``."""

    def stop(self, agent: AgentProtocol) -> defer.Deferred:
        """Ask the process to end; fires with its ``AgentExit``."""

    def restarting(self, delay: float) -> None:
        """A restart after a crash waits ``delay`` seconds first."""

    def crashed(self, agent: AgentProtocol, exit: AgentExit) -> None:
        """The process ended without being asked to."""


def _answer(outputs):
    """Automat collector: what the one output of a transition that answers returned (every
    output runs)."""
    answers = [value for value in outputs if value is not None]
    return answers[0] if answers else None


class AgentLifecycle:
    """``want()`` fires with the running agent, starting it if need be; ``stop()`` and
    ``delete()`` end it; the process's own exit moves the machine on. ``status`` (an
    ``AgentStatus``) names the stage. ``clock`` times the back-off and the crash window."""

    _machine = MethodicalMachine()
    _set_trace = _machine._setTrace

    def __init__(
        self,
        key: str,
        clock: IReactorTime,
        host: AgentHost,
        crash_limit: int = CRASH_LIMIT,
        crash_window: float = CRASH_WINDOW,
        backoff_base: float = CRASH_BACKOFF_BASE,
    ) -> None:
        self.key = key
        self._clock = clock
        self._host = host
        self._crash_limit = crash_limit
        self._crash_window = crash_window
        self._backoff_base = backoff_base
        # The process of the latest start; None before the first spawn.
        self.agent: AgentProtocol | None = None
        self.status = AgentStatus.STOPPED
        # The status follows the machine's state: set on every transition, before its
        # outputs run (Automat's trace hook), so no transition can forget it.
        self._set_trace(self._entering)
        # (clock seconds, stderr tail) of each crash within the crash window.
        self._crashes: collections.deque[tuple[float, str]] = collections.deque()
        # Everyone waiting for the start under way (or for the back-off before it).
        self._waiters = SharedOutcome()
        self._start: defer.Deferred | None = None
        # The back-off, or the end of the crash window when failed.
        self._timer = None

    # -- the public side ------------------------------------------------------

    def want(self) -> defer.Deferred:
        """Fire with the running agent: at once, or once it has (re)started."""
        self._forget_old_crashes()
        if self._crashes:
            return self._want_after_crash(self._backoff_base * 2 ** (len(self._crashes) - 1))
        return self._want()

    def stop(self) -> defer.Deferred:
        """Stop a running agent; fires with its ``AgentExit`` (None if there was none)."""
        return self._stop()

    async def delete(self) -> None:
        """Nothing starts again; returns once no process of this session is left."""
        start = self._start
        self._delete()
        if start is not None:
            await start
        if self.agent is not None:
            await self.agent.exited

    def _entering(self, old_state: str, input: str, new_state: str) -> None:
        self.status = _STATUS_OF_STATE[new_state]

    def _forget_old_crashes(self) -> None:
        horizon = self._clock.seconds() - self._crash_window
        while self._crashes and self._crashes[0][0] < horizon:
            self._crashes.popleft()

    async def _run_start(self) -> AgentProtocol:
        await self._host.prepare()
        agent = self._host.spawn()
        self._spawned(agent)
        state = await agent.ready
        self._host.started(agent, state)
        return agent

    def _agent_exited(self, exit: AgentExit, agent: AgentProtocol) -> AgentExit:
        if agent is not self.agent:
            return exit
        if exit.stop_requested:
            self._ended(exit)
            return exit
        self._crashes.append((self._clock.seconds(), exit.stderr_tail))
        self._forget_old_crashes()
        if len(self._crashes) >= self._crash_limit:
            self._crashed_too_often(exit)
        else:
            self._crashed(exit)
        return exit

    # -- states ---------------------------------------------------------------

    @_machine.state(initial=True)
    def stopped(self):
        "No process."

    @_machine.state()
    def backing_off(self):
        "Waiting before restarting an agent that crashed."

    @_machine.state()
    def starting(self):
        "Making room, spawning, waiting for the start-up handshake."

    @_machine.state()
    def running(self):
        "The process answers."

    @_machine.state()
    def stopping(self):
        "The process was asked to end."

    @_machine.state()
    def stopping_to_restart(self):
        "The process was asked to end, and is wanted again."

    @_machine.state()
    def failed(self):
        "It crashed too often: refused until the crashes leave the crash window."

    @_machine.state()
    def deleted(self):
        "The session is gone; nothing starts again."

    # -- inputs ---------------------------------------------------------------

    @_machine.input()
    def _want(self):
        "Someone needs the agent."

    @_machine.input()
    def _want_after_crash(self, delay: float):
        "Someone needs the agent, which crashed recently."

    @_machine.input()
    def _backoff_elapsed(self):
        "The delay before a restart is over."

    @_machine.input()
    def _spawned(self, agent: AgentProtocol):
        "The start spawned its process."

    @_machine.input()
    def _started(self, agent: AgentProtocol):
        "The process answered its start-up handshake."

    @_machine.input()
    def _start_failed(self, failure: Failure):
        "Making room, spawning or the handshake failed."

    @_machine.input()
    def _stop(self):
        "Stop the agent (idle, or room for another)."

    @_machine.input()
    def _ended(self, exit: AgentExit):
        "The process ended as it was asked to."

    @_machine.input()
    def _crashed(self, exit: AgentExit):
        "The process ended by itself."

    @_machine.input()
    def _crashed_too_often(self, exit: AgentExit):
        "The process ended by itself, the crash limit's time within the crash window."

    @_machine.input()
    def _window_passed(self):
        "The crashes that made it fail are old enough to forget."

    @_machine.input()
    def _delete(self):
        "The session is deleted."

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _new_waiters(self):
        if self._waiters.settled:
            self._waiters = SharedOutcome()

    @_machine.output()
    def _begin_start(self):
        self._start = start = defer.Deferred.fromCoroutine(self._run_start())
        start.addCallbacks(self._started, self._start_failed)

    @_machine.output()
    def _wait(self):
        return self._waiters.observe()

    @_machine.output()
    def _give_agent(self):
        return defer.succeed(self.agent)

    @_machine.output()
    def _refuse_failed(self):
        tail = self._crashes[-1][1] if self._crashes else ""
        return defer.fail(
            AgentFailed(
                f"the agent exited {len(self._crashes)} times within "
                f"{self._crash_window:.0f} s; last stderr: {tail[-2000:] or '(empty)'}"
            )
        )

    @_machine.output()
    def _refuse_deleted(self):
        return defer.fail(NotFound(f"session {self.key} was deleted"))

    @_machine.output()
    def _schedule_restart(self, delay: float):
        self._host.restarting(delay)
        self._timer = self._clock.callLater(delay, self._backoff_elapsed)

    @_machine.output()
    def _schedule_retry(self):
        oldest = self._crashes[0][0]
        remaining = max(0.0, oldest + self._crash_window - self._clock.seconds())
        self._timer = self._clock.callLater(remaining, self._window_passed)

    @_machine.output()
    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @_machine.output()
    def _keep_agent(self, agent: AgentProtocol):
        self.agent = agent
        agent.exited.addCallback(self._agent_exited, agent)

    @_machine.output()
    def _stop_spawned(self, agent: AgentProtocol):
        # The session was deleted while its agent was being spawned.
        self.agent = agent
        self._host.stop(agent)

    @_machine.output()
    def _settle_started(self, agent: AgentProtocol):
        self._start = None
        self._waiters.settle(agent)

    @_machine.output()
    def _settle_failed(self, failure: Failure):
        self._start = None
        self._waiters.settle(failure)

    @_machine.output()
    def _forget_start(self):
        self._start = None

    @_machine.output()
    def _settle_deleted(self):
        self._waiters.settle(Failure(NotFound(f"session {self.key} was deleted")))

    @_machine.output()
    def _stop_agent(self):
        return self._host.stop(self.agent)

    @_machine.output()
    def _wait_for_exit(self):
        return self.agent.exited

    @_machine.output()
    def _nothing_to_stop(self):
        return defer.succeed(None)

    @_machine.output()
    def _stop_agent_if_running(self):
        if self.agent is not None and self.agent.exit is None:
            self._host.stop(self.agent)

    @_machine.output()
    def _report_crash(self, exit: AgentExit):
        self._host.crashed(self.agent, exit)

    # -- transitions ----------------------------------------------------------
    # Every input has a transition in every state: an input that means nothing in a
    # state (a late timer, an exit after a delete) is ignored there, on purpose.

    _waiting = [_wait]
    for _input in (_want, _want_after_crash):
        starting.upon(_input, enter=starting, outputs=_waiting, collector=_answer)
        backing_off.upon(_input, enter=backing_off, outputs=_waiting, collector=_answer)
        running.upon(_input, enter=running, outputs=[_give_agent], collector=_answer)
        stopping.upon(
            _input,
            enter=stopping_to_restart,
            outputs=[_new_waiters, _wait],
            collector=_answer,
        )
        stopping_to_restart.upon(
            _input, enter=stopping_to_restart, outputs=_waiting, collector=_answer
        )
        failed.upon(_input, enter=failed, outputs=[_refuse_failed], collector=_answer)
        deleted.upon(_input, enter=deleted, outputs=[_refuse_deleted], collector=_answer)
    stopped.upon(
        _want,
        enter=starting,
        outputs=[_new_waiters, _wait, _begin_start],
        collector=_answer,
    )
    stopped.upon(
        _want_after_crash,
        enter=backing_off,
        outputs=[_new_waiters, _wait, _schedule_restart],
        collector=_answer,
    )
    # (_wait before _begin_start: a start that ends at once still finds its waiter.)

    backing_off.upon(_backoff_elapsed, enter=starting, outputs=[_begin_start])
    for _state in (stopped, starting, running, stopping, stopping_to_restart, failed, deleted):
        _state.upon(_backoff_elapsed, enter=_state, outputs=[])

    starting.upon(_spawned, enter=starting, outputs=[_keep_agent])
    deleted.upon(_spawned, enter=deleted, outputs=[_stop_spawned])

    starting.upon(_started, enter=running, outputs=[_settle_started])
    starting.upon(_start_failed, enter=stopped, outputs=[_settle_failed])
    # A crash while starting: the handshake fails first (then the exit comes, in stopped).
    for _state in (stopped, failed, deleted):
        _state.upon(_started, enter=_state, outputs=[_forget_start])
        _state.upon(_start_failed, enter=_state, outputs=[_forget_start])

    running.upon(_stop, enter=stopping, outputs=[_stop_agent], collector=_answer)
    for _state in (stopping, stopping_to_restart):
        _state.upon(_stop, enter=_state, outputs=[_wait_for_exit], collector=_answer)
    for _state in (stopped, backing_off, starting, failed, deleted):
        _state.upon(_stop, enter=_state, outputs=[_nothing_to_stop], collector=_answer)

    stopping.upon(_ended, enter=stopped, outputs=[])
    stopping_to_restart.upon(_ended, enter=starting, outputs=[_begin_start])
    # Stopped by someone else (the server shutting down): nothing more to do.
    running.upon(_ended, enter=stopped, outputs=[])
    for _state in (stopped, backing_off, starting, failed, deleted):
        _state.upon(_ended, enter=_state, outputs=[])

    running.upon(_crashed, enter=stopped, outputs=[_report_crash])
    running.upon(_crashed_too_often, enter=failed, outputs=[_report_crash, _schedule_retry])
    for _state in (stopped, starting):
        _state.upon(_crashed, enter=_state, outputs=[_report_crash])
        _state.upon(
            _crashed_too_often,
            enter=failed,
            outputs=[_report_crash, _schedule_retry],
        )
    # An agent asked to stop that dies by itself meanwhile has still ended.
    stopping.upon(_crashed, enter=stopped, outputs=[])
    stopping.upon(_crashed_too_often, enter=stopped, outputs=[])
    stopping_to_restart.upon(_crashed, enter=starting, outputs=[_begin_start])
    stopping_to_restart.upon(_crashed_too_often, enter=starting, outputs=[_begin_start])
    for _state in (backing_off, failed, deleted):
        _state.upon(_crashed, enter=_state, outputs=[])
        _state.upon(_crashed_too_often, enter=_state, outputs=[])

    failed.upon(_window_passed, enter=stopped, outputs=[])
    for _state in (stopped, backing_off, starting, running, stopping, stopping_to_restart, deleted):
        _state.upon(_window_passed, enter=_state, outputs=[])

    for _state in (stopped, backing_off, starting, running, stopping, stopping_to_restart, failed):
        _state.upon(
            _delete,
            enter=deleted,
            outputs=[_cancel_timer, _settle_deleted, _stop_agent_if_running],
        )
    deleted.upon(_delete, enter=deleted, outputs=[])
    del _input, _state, _waiting
