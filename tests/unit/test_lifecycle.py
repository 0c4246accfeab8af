"""
The session agent's state machine (piserver.sessions.lifecycle), transition by
transition, with a fake host and fake agents on a task.Clock.
"""

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure

from piserver.agents.protocol import AgentExit
from piserver.common.errors import AgentExited, AgentFailed, NotFound, TooManySessions
from piserver.common.outcome import SharedOutcome
from piserver.sessions.lifecycle import CRASH_LIMIT, CRASH_WINDOW, AgentLifecycle, AgentStatus
from tests.support.deferreds import outcome_of, result_of


def failure_of(deferred) -> Failure:
    outcome = outcome_of(deferred)
    assert isinstance(outcome, Failure), outcome
    return outcome


class FakeAgent:
    def __init__(self, number: int):
        self.number = number
        self._ready = SharedOutcome()
        self._exited = SharedOutcome()
        self.exit = None
        self.stop_requested = False

    @property
    def ready(self):
        return self._ready.observe()

    @property
    def exited(self):
        return self._exited.observe()

    def answer(self):
        self._ready.settle({"model": None})

    def end(self, code=1):
        self.exit = AgentExit(code, None, f"stderr of agent {self.number}", self.stop_requested)
        if not self._ready.settled:
            self._ready.settle(Failure(AgentExited(self.exit.describe())))
        self._exited.settle(self.exit)


class FakeHost:
    def __init__(self):
        self.agents: list[FakeAgent] = []
        self.preparing: defer.Deferred | None = None
        self.crashes: list[tuple[FakeAgent, AgentExit]] = []
        self.restarts: list[float] = []
        self.stopped: list[FakeAgent] = []
        self.started_with: list[dict] = []

    async def prepare(self):
        if self.preparing is not None:
            await self.preparing

    def spawn(self):
        agent = FakeAgent(len(self.agents))
        self.agents.append(agent)
        return agent

    def started(self, agent, state):
        self.started_with.append(state)

    def stop(self, agent):
        agent.stop_requested = True
        self.stopped.append(agent)
        return agent.exited

    def restarting(self, delay):
        self.restarts.append(delay)

    def crashed(self, agent, exit):
        self.crashes.append((agent, exit))


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def host():
    return FakeHost()


@pytest.fixture
def lifecycle(clock, host):
    return AgentLifecycle("session-1", clock, host)


def running(lifecycle, host):
    wanted = lifecycle.want()
    host.agents[-1].answer()
    return result_of(wanted)


def test_want_starts_and_every_caller_shares_the_start(lifecycle, host):
    first, second = lifecycle.want(), lifecycle.want()
    assert lifecycle.status == "starting" and len(host.agents) == 1
    assert not first.called and not second.called
    host.agents[0].answer()
    assert result_of(first) is result_of(second) is host.agents[0]
    assert lifecycle.status == "running" and host.started_with == [{"model": None}]


def test_want_while_running_is_answered_at_once(lifecycle, host):
    agent = running(lifecycle, host)
    assert result_of(lifecycle.want()) is agent and len(host.agents) == 1


def test_a_start_that_cannot_find_room_fails_its_callers_and_stops(lifecycle, host):
    host.preparing = defer.Deferred()
    wanted = lifecycle.want()
    host.preparing.errback(TooManySessions("full"))
    assert failure_of(wanted).check(TooManySessions)
    assert lifecycle.status == "stopped" and host.agents == []
    # Not a crash: the next want starts at once, with no back-off.
    host.preparing = None
    lifecycle.want()
    assert lifecycle.status == "starting" and host.restarts == []


def test_crash_while_starting_fails_the_callers_and_backs_off_the_next_start(
    lifecycle, host, clock
):
    wanted = lifecycle.want()
    host.agents[0].end(code=3)
    assert failure_of(wanted).check(AgentExited)
    assert lifecycle.status == "stopped"
    assert [agent.number for agent, _ in host.crashes] == [0]
    again = lifecycle.want()
    assert lifecycle.status == "backing-off" and host.restarts == [0.5]
    assert len(host.agents) == 1
    clock.advance(0.5)
    assert lifecycle.status == "starting" and len(host.agents) == 2
    host.agents[1].answer()
    assert result_of(again) is host.agents[1]


def test_crash_while_running_reports_it_and_the_next_want_restarts(lifecycle, host, clock):
    agent = running(lifecycle, host)
    agent.end(code=1)
    assert lifecycle.status == "stopped" and host.crashes == [(agent, agent.exit)]
    wanted = lifecycle.want()
    clock.advance(0.5)
    host.agents[1].answer()
    assert result_of(wanted) is host.agents[1]


def test_crash_loop_ends_in_failed_until_the_window_passes(lifecycle, host, clock):
    delays = []
    for _attempt in range(CRASH_LIMIT):
        wanted = lifecycle.want()
        if lifecycle.status == "backing-off":
            delays.append(host.restarts[-1])
            clock.advance(host.restarts[-1])
        host.agents[-1].end(code=1)
        assert failure_of(wanted).check(AgentExited)
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert lifecycle.status == "failed"
    refused = failure_of(lifecycle.want())
    assert refused.check(AgentFailed)
    assert f"{CRASH_LIMIT} times" in refused.getErrorMessage()
    assert f"stderr of agent {CRASH_LIMIT - 1}" in refused.getErrorMessage()
    assert len(host.agents) == CRASH_LIMIT
    clock.advance(CRASH_WINDOW + 1)
    assert lifecycle.status == "stopped"
    lifecycle.want()
    assert lifecycle.status == "starting" and len(host.agents) == CRASH_LIMIT + 1


def test_stop_of_a_running_agent(lifecycle, host):
    agent = running(lifecycle, host)
    stopped = lifecycle.stop()
    assert lifecycle.status == "stopping" and host.stopped == [agent]
    assert not stopped.called
    assert not lifecycle.stop().called  # a second stop waits for the same exit
    agent.end(code=0)
    assert result_of(stopped) == agent.exit
    assert lifecycle.status == "stopped" and host.crashes == []
    # A requested stop is no crash: the next start has no back-off.
    lifecycle.want()
    assert lifecycle.status == "starting" and host.restarts == []


def test_stop_when_there_is_nothing_to_stop(lifecycle, host):
    assert result_of(lifecycle.stop()) is None
    lifecycle.want()
    assert result_of(lifecycle.stop()) is None  # a starting agent is not stopped
    assert lifecycle.status == "starting" and host.stopped == []


def test_idle_stop_racing_a_prompt_restarts_the_agent_for_it(lifecycle, host):
    agent = running(lifecycle, host)
    lifecycle.stop()  # the idle sweep
    prompt = lifecycle.want()  # a prompt arrives before the agent has exited
    assert lifecycle.status == "starting" and not prompt.called
    assert len(host.agents) == 1  # the old one still holds the place until it has gone
    agent.end(code=0)
    assert len(host.agents) == 2 and host.crashes == []
    host.agents[1].answer()
    assert result_of(prompt) is host.agents[1]
    assert lifecycle.status == "running"


def test_delete_while_starting_fails_the_callers_and_stops_the_process(lifecycle, host):
    wanted = lifecycle.want()
    deleting = defer.ensureDeferred(lifecycle.delete())
    assert failure_of(wanted).check(NotFound)
    assert lifecycle.status == "deleted" and host.stopped == [host.agents[0]]
    assert not deleting.called  # not before the process has gone
    host.agents[0].end(code=0)
    assert result_of(deleting) is None
    assert failure_of(lifecycle.want()).check(NotFound)
    assert host.crashes == []


def test_delete_before_the_spawn_stops_the_process_the_start_then_spawns(lifecycle, host):
    host.preparing = defer.Deferred()
    wanted = lifecycle.want()
    deleting = defer.ensureDeferred(lifecycle.delete())
    assert failure_of(wanted).check(NotFound) and host.agents == []
    host.preparing.callback(None)
    assert host.stopped == host.agents and len(host.agents) == 1
    host.agents[0].end(code=0)
    assert result_of(deleting) is None and lifecycle.status == "deleted"


def test_delete_while_backing_off_cancels_the_restart(lifecycle, host, clock):
    running(lifecycle, host).end(code=1)
    wanted = lifecycle.want()
    assert lifecycle.status == "backing-off"
    result_of(defer.ensureDeferred(lifecycle.delete()))
    assert failure_of(wanted).check(NotFound)
    clock.advance(10)
    assert len(host.agents) == 1 and lifecycle.status == "deleted"


def test_delete_while_running_stops_the_agent(lifecycle, host):
    agent = running(lifecycle, host)
    deleting = defer.ensureDeferred(lifecycle.delete())
    assert host.stopped == [agent] and not deleting.called
    agent.end(code=0)
    assert result_of(deleting) is None and host.crashes == []


def test_a_crash_after_delete_is_not_reported(lifecycle, host):
    agent = running(lifecycle, host)
    defer.ensureDeferred(lifecycle.delete())
    agent.stop_requested = False  # it died by itself before it saw the stop
    agent.end(code=1)
    assert host.crashes == []


def test_warm_agent_handed_over_while_still_starting(lifecycle, host):
    # The warm pool wants the agent ahead; the session it is handed to wants it too.
    pool = lifecycle.want()
    create = lifecycle.want()
    assert len(host.agents) == 1 and lifecycle.status == "starting"
    host.agents[0].answer()
    assert result_of(pool) is result_of(create) is host.agents[0]


def test_crashes_older_than_the_window_are_forgotten(lifecycle, host, clock):
    running(lifecycle, host).end(code=1)
    clock.advance(CRASH_WINDOW + 1)
    lifecycle.want()
    assert lifecycle.status == "starting" and host.restarts == []  # no back-off


def test_the_status_is_an_agent_status_that_follows_every_transition(lifecycle, host):
    """Set by Automat's trace hook: asked to stop and wanted again, it shows starting."""
    assert lifecycle.status is AgentStatus.STOPPED
    agent = running(lifecycle, host)
    assert lifecycle.status is AgentStatus.RUNNING
    lifecycle.stop()
    assert lifecycle.status is AgentStatus.STOPPING
    lifecycle.want()
    assert lifecycle.status is AgentStatus.STARTING
    agent.end(0)
    assert lifecycle.status is AgentStatus.STARTING and len(host.agents) == 2


@pytest.mark.parametrize(
    ("status", "holds_a_place", "can_be_handed_over", "listed"),
    [
        (AgentStatus.STOPPED, False, False, "stopped"),
        (AgentStatus.BACKING_OFF, False, False, "starting"),
        (AgentStatus.STARTING, True, True, "starting"),
        (AgentStatus.RUNNING, True, True, "running"),
        (AgentStatus.STOPPING, True, False, "running"),
        (AgentStatus.FAILED, False, False, "stopped"),
        (AgentStatus.DELETED, False, False, "stopped"),
    ],
)
def test_what_each_status_means_to_the_rest_of_the_server(
    status, holds_a_place, can_be_handed_over, listed
):
    assert status.holds_a_place is holds_a_place
    assert status.can_be_handed_over is can_be_handed_over
    assert status.listed == listed
