"""Real processes under the real reactor: the stub agent's faults, the real pi's start and stop."""

import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from piserver.agents.launchers import LocalLauncher
from piserver.agents.protocol import AgentExit
from piserver.agents.supervisor import AgentSupervisor
from piserver.common.errors import AgentCommandFailed, AgentExited, AgentTimeout
from tests.support.piagent import FAKE_PROVIDER
from tests.support.processes import wait_until

STUB = str(Path(__file__).resolve().parents[1] / "support" / "stubagent.py")
SAFETY_NET = 20.0
"""Seconds any wait may take before the test fails: against hangs, not a sleep."""


def within(d: defer.Deferred, seconds: float = SAFETY_NET) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


class Events:
    def __init__(self):
        self.received = []

    def __call__(self, event, raw):
        self.received.append((event, raw))

    @property
    def types(self):
        return [event["type"] for event, _ in self.received]


def stub_supervisor(tmp_path, term_grace: float) -> AgentSupervisor:
    env = dict(os.environ, PI_SERVER_AUTH_TOKEN="must-not-leak")
    agents = AgentSupervisor(
        reactor,
        [sys.executable, STUB],
        str(tmp_path / "agent"),
        env,
        {"PI_SERVER_AUTH_TOKEN"},
        command_timeout=SAFETY_NET,
        startup_timeout=SAFETY_NET,
        abort_timeout=0.5,
        term_grace=term_grace,
        kill_grace=0.5,
    )
    agents.startService()
    return agents


@pytest_twisted.async_yield_fixture
async def supervisor(tmp_path):
    agents = stub_supervisor(tmp_path, term_grace=0.5)
    yield agents
    await within(agents.stopService())


@pytest_twisted.async_yield_fixture
async def patient_supervisor(tmp_path):
    # For an agent that is to exit by itself at the end of its input: however slowly a
    # loaded machine lets it (the grace is only waited out by one that does not).
    agents = stub_supervisor(tmp_path, term_grace=5.0)
    yield agents
    await within(agents.stopService())


async def start(supervisor, tmp_path, *args, key="s1"):
    events = Events()
    agent = supervisor.spawn(key, ["--no-session", *args], str(tmp_path), events)
    await within(agent.ready)
    return agent, events


@pytest_twisted.ensureDeferred
async def test_environment_cwd_and_argv(supervisor, tmp_path):
    agent, _ = await start(supervisor, tmp_path)
    seen = await within(agent.command("stub_env"))
    assert seen["argv"] == ["--mode", "rpc", "--no-session"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["env"]["PI_CODING_AGENT_DIR"] == str(tmp_path / "agent")
    assert seen["env"]["PI_SKIP_VERSION_CHECK"] == "1"
    assert "PI_SERVER_AUTH_TOKEN" not in seen["env"]


@pytest_twisted.ensureDeferred
async def test_garbage_lines_are_skipped(supervisor, tmp_path):
    agent, events = await start(supervisor, tmp_path)
    assert await within(agent.command("stub_garbage")) == {}
    assert events.types == ["stub_after_garbage"]
    assert (await within(agent.command("get_state")))["stub"] is True


@pytest_twisted.ensureDeferred
async def test_a_30_mb_line(supervisor, tmp_path):
    agent, events = await start(supervisor, tmp_path)
    size = 30 * 1024 * 1024
    await within(agent.command("stub_big_line", size=size))
    [(event, raw)] = events.received
    assert event["type"] == "stub_big"
    assert len(event["text"]) == size
    assert event["text"].startswith("ab\u00e9ab\u00e9")
    assert len(raw) > size
    assert raw.endswith(b'"}')


@pytest_twisted.ensureDeferred
async def test_utf8_split_across_reads(supervisor, tmp_path):
    agent, events = await start(supervisor, tmp_path)
    reads = []
    deliver = agent.outReceived

    def record(data):
        reads.append(data)
        deliver(data)
        if not data.endswith(b"\n") and len(reads) == 1:
            # The stub waits, half-way through a character, for this go-ahead.
            agent.send({"type": "stub_continue"})

    agent.outReceived = record
    await within(agent.command("stub_split_utf8"))
    with pytest.raises(UnicodeDecodeError):
        reads[0].decode("utf-8")
    assert events.types == ["stub_split"]
    assert events.received[0][0]["text"] == "before \U0001f600 after \u00e9\u20ac"


@pytest_twisted.ensureDeferred
async def test_an_unanswered_command_times_out_and_the_agent_keeps_working(supervisor, tmp_path):
    agent, _ = await start(supervisor, tmp_path)
    with pytest.raises(AgentTimeout):
        await within(agent.command("stub_never_answer", timeout=0.3))
    assert (await within(agent.command("get_state")))["stub"] is True


@pytest_twisted.ensureDeferred
async def test_failures_and_unknown_commands(supervisor, tmp_path):
    agent, _ = await start(supervisor, tmp_path)
    with pytest.raises(AgentCommandFailed, match="stub failure"):
        await within(agent.command("stub_fail"))
    # pi answers unknown commands without an id: only the timeout ends the wait
    with pytest.raises(AgentTimeout):
        await within(agent.command("no_such_command", timeout=0.3))


@pytest_twisted.ensureDeferred
async def test_exit_during_a_command_fails_every_pending_command(supervisor, tmp_path):
    agent, _ = await start(supervisor, tmp_path)
    hanging = agent.command("stub_never_answer")
    exiting = agent.command("stub_exit", code=7)
    for pending in (hanging, exiting):
        with pytest.raises(AgentExited, match=r"agent exited \(code 7\)"):
            await within(pending)
    exit = await within(agent.exited)
    assert (exit.code, exit.signal, exit.stop_requested) == (7, None, False)
    assert await supervisor.stop("s1") is None  # no longer held
    with pytest.raises(AgentExited):
        await agent.command("get_state")


@pytest_twisted.ensureDeferred
async def test_stderr_tail_and_a_crash_at_start(supervisor, tmp_path):
    agent, _ = await start(supervisor, tmp_path)
    await within(agent.command("stub_stderr", lines=3))
    assert agent.stderr_tail.endswith("stub stderr line 2\n")
    crashing = supervisor.spawn("s2", ["--crash-at-start"], str(tmp_path), Events())
    with pytest.raises(AgentExited, match=r"code 3"):
        await within(crashing.ready)
    exit = await within(crashing.exited)
    assert exit.code == 3
    assert "fatal start-up error" in exit.stderr_tail


@pytest_twisted.ensureDeferred
async def test_stop_closes_stdin_and_the_agent_exits(patient_supervisor, tmp_path):
    agent, _ = await start(patient_supervisor, tmp_path)
    exit = await within(patient_supervisor.stop("s1"))
    assert exit == AgentExit(code=0, signal=None, stderr_tail="", stop_requested=True)


@pytest_twisted.ensureDeferred
async def test_an_agent_ignoring_end_of_input_gets_term(supervisor, tmp_path):
    agent, _ = await start(supervisor, tmp_path, "--ignore-eof")
    exit = await within(supervisor.stop("s1"))
    assert (exit.code, exit.signal) == (None, 15)


@pytest_twisted.ensureDeferred
async def test_term_ignored_then_kill(supervisor, tmp_path):
    agent, _ = await start(supervisor, tmp_path, "--ignore-eof", "--ignore-term")
    exit = await within(supervisor.stop("s1"))
    assert (exit.code, exit.signal) == (None, 9)


@pytest_twisted.ensureDeferred
async def test_stop_service_stops_everything(patient_supervisor, tmp_path):
    agents = [
        (await start(patient_supervisor, tmp_path, *args, key=key))[0]
        for key, args in [
            ("a", []),
            ("b", ["--ignore-eof"]),
            ("c", ["--ignore-eof", "--ignore-term"]),
        ]
    ]
    await within(patient_supervisor.stopService())
    assert [await patient_supervisor.stop(key) for key in "abc"] == [None] * 3  # none held
    assert [(a.exit.code, a.exit.signal) for a in agents] == [(0, None), (None, 15), (None, 9)]


@pytest_twisted.ensureDeferred
async def test_the_real_pi_answers_the_handshake_and_stops(pi_binary, agent_dir):
    agents = AgentSupervisor(
        reactor,
        list(pi_binary),
        str(agent_dir.path),
        dict(agent_dir.environment(), PI_SERVER_AUTH_TOKEN="must-not-leak"),
        {"PI_SERVER_AUTH_TOKEN"},
    )
    agents.startService()
    try:
        agent = agents.spawn("real", ["--no-session"], str(agent_dir.project), Events())
        state = await within(agent.ready)
        assert state["isStreaming"] is False
        assert state["model"]["provider"] == FAKE_PROVIDER
    finally:
        await within(agents.stopService())
    assert agent.exit.code == 0
    assert agent.exit.signal is None


@pytest_twisted.ensureDeferred
async def test_what_an_agent_started_goes_with_it(tmp_path):
    agents = AgentSupervisor(
        reactor,
        [sys.executable, STUB],
        str(tmp_path / "agent"),
        dict(os.environ),
        (),
        command_timeout=SAFETY_NET,
        startup_timeout=SAFETY_NET,
        launcher=LocalLauncher(reactor, own_process_group=True),
    )
    agents.startService()
    agent, _events = await start(agents, tmp_path)
    child = (await within(agent.command("stub_child")))["pid"]
    assert os.getpgid(child) == agent.pid  # the agent leads a group of its own
    await within(agents.stop(agent))
    await within(agents.stopService())
    # The child is killed (and, orphaned, reaped by init): it no longer runs.
    wait_until(lambda: not _runs(child), SAFETY_NET, "the agent's child to end")


def _runs(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
