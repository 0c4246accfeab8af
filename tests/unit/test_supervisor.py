import pytest

from piserver.agents.protocol import AgentExit
from piserver.agents.supervisor import AgentSupervisor
from piserver.common.errors import AgentExited, AgentTimeout, InvalidState
from tests.support.deferreds import outcome_of
from tests.support.fakeprocess import FakeProcessReactor

BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/me",
    "OPENAI_API_KEY": "sk-test",
    "PI_SERVER_AUTH_TOKEN": "secret-token",
    "GITHUB_TOKEN": "gh-secret",
}
FORBIDDEN = {"PI_SERVER_AUTH_TOKEN", "GITHUB_TOKEN"}


def make_supervisor(**kwargs):
    reactor = FakeProcessReactor()
    supervisor = AgentSupervisor(
        reactor, ["/opt/node", "/opt/pi/cli.js"], "/data", BASE_ENV, FORBIDDEN, **kwargs
    )
    supervisor.startService()
    return supervisor, reactor


def no_events(event, raw):
    raise AssertionError(f"unexpected event {event}")


def spawn(supervisor, reactor, key="s1"):
    agent = supervisor.spawn(key, ["--no-session"], f"/work/{key}", no_events)
    return agent, reactor.spawned[-1].process


def answer_handshake(process, data=None):
    [handshake] = [c for c in process.lines() if c["type"] == "get_state"]
    process.respond(handshake, data=data or {"sessionId": "x"})


def test_spawn_runs_pi_in_rpc_mode_in_the_cwd_with_a_clean_env():
    supervisor, reactor = make_supervisor()
    agent, process = spawn(supervisor, reactor)
    [spawned] = reactor.spawned
    assert spawned.executable == "/opt/node"
    assert spawned.args == ["/opt/node", "/opt/pi/cli.js", "--mode", "rpc", "--no-session"]
    assert spawned.path == "/work/s1"
    assert spawned.env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/me",
        "OPENAI_API_KEY": "sk-test",
        "PI_CODING_AGENT_DIR": "/data",
        "PI_SKIP_VERSION_CHECK": "1",
    }
    assert agent.pid == process.pid
    # It is the agent of "s1": stopping "s1" stops it.
    stopped = supervisor.stop("s1")
    assert agent.stop_requested
    process.end(code=0)
    assert outcome_of(stopped) is agent.exit


def test_a_bare_command_name_is_found_on_the_env_path(tmp_path):
    pi = tmp_path / "pi"
    pi.write_text("#!/bin/sh\n")
    pi.chmod(0o755)
    reactor = FakeProcessReactor()
    supervisor = AgentSupervisor(reactor, ["pi"], "/data", {"PATH": str(tmp_path)}, set())
    supervisor.spawn("s1", [], "/", no_events)
    assert reactor.spawned[0].executable == str(pi)
    with pytest.raises(ValueError):
        AgentSupervisor(reactor, ["no-such-pi"], "/data", {"PATH": str(tmp_path)}, set())


def test_ready_fires_with_the_startup_state():
    supervisor, reactor = make_supervisor()
    agent, process = spawn(supervisor, reactor)
    ready = agent.ready
    assert not ready.called
    answer_handshake(process, {"sessionId": "abc", "isStreaming": False})
    assert outcome_of(ready) == {"sessionId": "abc", "isStreaming": False}


def test_an_agent_that_does_not_answer_at_startup_is_stopped():
    supervisor, reactor = make_supervisor(startup_timeout=20)
    agent, process = spawn(supervisor, reactor)
    ready = agent.ready
    reactor.advance(20)
    assert outcome_of(ready).check(AgentTimeout)
    assert [c["type"] for c in process.lines()] == ["get_state", "abort"]
    assert agent.stop_requested


def test_one_agent_per_key():
    supervisor, reactor = make_supervisor()
    spawn(supervisor, reactor)
    with pytest.raises(ValueError):
        spawn(supervisor, reactor)
    spawn(supervisor, reactor, key="s2")
    assert [spawned.path for spawned in reactor.spawned] == ["/work/s1", "/work/s2"]


def test_an_ended_agent_frees_its_key_before_the_owner_hears_of_it():
    supervisor, reactor = make_supervisor()
    agent, process = spawn(supervisor, reactor)
    seen = []
    # A key the supervisor does not hold: stopping it fires with None at once.
    agent.exited.addCallback(lambda exit: seen.append((exit, outcome_of(supervisor.stop("s1")))))
    process.stderr(b"fatal\n")
    process.end(code=1)
    assert seen == [(AgentExit(1, None, "fatal\n"), None)]
    assert outcome_of(agent.ready).check(AgentExited)
    spawn(supervisor, reactor)
    with pytest.raises(ValueError):
        spawn(supervisor, reactor)  # "s1" is held again


def test_stop_sequence_abort_then_stdin_then_term_then_kill():
    supervisor, reactor = make_supervisor(abort_timeout=1, term_grace=3, kill_grace=3)
    agent, process = spawn(supervisor, reactor)
    answer_handshake(process)
    stopped = supervisor.stop("s1")
    abort = process.lines()[-1]
    assert abort["type"] == "abort"
    assert not process.stdin_closed
    reactor.advance(1)  # abort not answered in time
    assert process.stdin_closed
    assert process.signals == []
    reactor.advance(2.9)
    assert process.signals == []
    reactor.advance(0.1)
    assert process.signals == ["TERM"]
    reactor.advance(2.9)
    assert process.signals == ["TERM"]
    reactor.advance(0.1)
    assert process.signals == ["TERM", "KILL"]
    assert not stopped.called
    process.end(code=None, signal=9)
    assert outcome_of(stopped) == AgentExit(None, 9, "", stop_requested=True)
    assert reactor.getDelayedCalls() == []
    assert outcome_of(supervisor.stop("s1")) is None  # no longer held


def test_an_answered_abort_closes_stdin_at_once_and_exit_cancels_the_signals():
    supervisor, reactor = make_supervisor()
    agent, process = spawn(supervisor, reactor)
    answer_handshake(process)
    stopped = supervisor.stop(agent)
    process.respond(process.lines()[-1])
    assert process.stdin_closed
    process.end(code=0)
    assert outcome_of(stopped) == AgentExit(0, None, "", stop_requested=True)
    reactor.advance(60)
    assert process.signals == []
    assert reactor.getDelayedCalls() == []


def test_term_is_enough_for_an_agent_that_honours_it():
    supervisor, reactor = make_supervisor(abort_timeout=1, term_grace=3, kill_grace=3)
    agent, process = spawn(supervisor, reactor)
    process.dies_of.add("TERM")
    stopped = supervisor.stop("s1")
    reactor.advance(1)
    reactor.advance(3)
    assert process.signals == ["TERM"]
    assert outcome_of(stopped).signal == 15
    reactor.advance(60)
    assert process.signals == ["TERM"]


def test_exit_during_the_abort_ends_the_stop_without_signals():
    supervisor, reactor = make_supervisor()
    agent, process = spawn(supervisor, reactor)
    stopped = supervisor.stop("s1")
    process.end(code=0)
    assert outcome_of(stopped).code == 0
    assert not process.stdin_closed
    reactor.advance(60)
    assert process.signals == []


def test_stop_is_idempotent():
    supervisor, reactor = make_supervisor()
    agent, process = spawn(supervisor, reactor)
    first = supervisor.stop("s1")
    second = supervisor.stop(agent)
    assert [c["type"] for c in process.lines()].count("abort") == 1
    process.end(code=0)
    assert outcome_of(first) == outcome_of(second) == agent.exit
    assert outcome_of(supervisor.stop(agent)) == agent.exit
    assert outcome_of(supervisor.stop("s1")) is None
    assert outcome_of(supervisor.stop("unknown")) is None


def test_stop_service_stops_every_agent_within_ten_seconds():
    supervisor, reactor = make_supervisor()
    agents = [spawn(supervisor, reactor, key=f"s{n}") for n in range(3)]
    quick, _, stubborn = (process for _, process in agents)
    stopped = supervisor.stopService()
    quick.respond(quick.lines()[-1])
    quick.end(code=0)
    agents[1][1].dies_of.add("TERM")
    stubborn.dies_of.add("KILL")
    assert not stopped.called
    reactor.pump([0.5] * 20)
    assert outcome_of(stopped) is None
    assert agents[1][1].signals == ["TERM"]
    assert stubborn.signals == ["TERM", "KILL"]
    assert [outcome_of(supervisor.stop(f"s{n}")) for n in range(3)] == [None] * 3
    with pytest.raises(InvalidState):
        spawn(supervisor, reactor, key="late")


def test_stop_service_with_no_agents_fires_at_once():
    supervisor, _ = make_supervisor()
    assert outcome_of(supervisor.stopService()) is None


def test_the_servers_agents_get_neither_github_token_name():
    """Issue 21 point 14: GH_TOKEN (gh's name for it) is kept from agents too."""
    from piserver.service import AGENT_FORBIDDEN_ENV

    reactor = FakeProcessReactor()
    env = {**BASE_ENV, "GH_TOKEN": "gh-other"}
    supervisor = AgentSupervisor(reactor, ["/opt/pi"], "/data", env, AGENT_FORBIDDEN_ENV)
    supervisor.startService()
    spawn(supervisor, reactor)
    spawned = reactor.spawned[-1].env
    assert "GH_TOKEN" not in spawned and "GITHUB_TOKEN" not in spawned
    assert spawned["OPENAI_API_KEY"] == "sk-test"
