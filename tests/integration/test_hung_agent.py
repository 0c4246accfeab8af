"""
A hung agent (SIGSTOP of the real pi) is noticed, killed and restarted; what
waits for it is bounded; it does not outlive the server.
"""

import os
import signal

import pytest_twisted
from twisted.internet import reactor

from tests.support.wsclient import CallFailed

SAFETY_NET = 60.0
"""Seconds any wait may take before the test fails: against hangs, not a sleep."""


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it: under bubblewrap the agent's pid is bwrap's,
    and pi runs further down."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def stop_agent(pid: int) -> None:
    """SIGSTOP the agent's every process, pi itself included: a hung pi."""
    for member in process_tree(pid):
        os.kill(member, signal.SIGSTOP)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def chat_session(server):
    client = await server.client()
    session_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    return client, session_id, server.sessions.sessions[session_id]


@pytest_twisted.ensureDeferred
async def test_a_stopped_agent_is_declared_hung_killed_and_restarted(make_pi_server):
    server = make_pi_server("--agent-probe-interval", "1")
    client, session_id, session = await chat_session(server)
    pid = session.agent.pid
    stop_agent(pid)
    try:
        # While it does not read, input waits in a bounded buffer: 4 MiB prompts are sent
        # until the bound is reached, then refused at once.
        big = "x" * (4 * 1024 * 1024)
        replies = [
            client.request("prompt", {"message": big}, session_id=session_id) for _ in range(12)
        ]
        answers = [await reply.addTimeout(SAFETY_NET, reactor) for reply in replies]
        codes = [a["error"]["code"] for a in answers if not a["ok"]]
        assert len(codes) == 12
        assert "agent_timeout" in codes  # refused: the input buffer was full
        assert "agent_exited" in codes  # waited, then the hung agent was killed
        hung = await client.wait_for_event(
            lambda f: f["type"] == "agent_hung" and f["sessionId"] == session_id
        ).addTimeout(SAFETY_NET, reactor)
        assert "killed" in hung["payload"]["message"]
        await client.wait_for_event(
            lambda f: f["type"] == "agent_exit" and f["payload"]["signal"] == signal.SIGKILL
        ).addTimeout(SAFETY_NET, reactor)
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    # The session was restarted for its attached client.
    state = await client.call("get_state", session_id=session_id)
    assert state is not None and session.agent.pid != pid
    listed = await client.call("session.list")
    assert [s["status"] for s in listed["sessions"]] == ["running"]


@pytest_twisted.ensureDeferred
async def test_a_stopped_agent_does_not_outlive_the_server(make_pi_server):
    server = make_pi_server()
    _client, _session_id, session = await chat_session(server)
    pid = session.agent.pid
    stop_agent(pid)
    try:
        await server.stop()
        assert gone(pid)
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest_twisted.ensureDeferred
async def test_a_prompt_to_a_stopped_agent_fails_when_it_is_found_hung(make_pi_server):
    server = make_pi_server("--agent-probe-interval", "1")
    client, session_id, session = await chat_session(server)
    pid = session.agent.pid
    stop_agent(pid)
    try:
        failed = client.call("prompt", {"message": "hi"}, session_id=session_id)
        try:
            await failed.addTimeout(SAFETY_NET, reactor)
        except CallFailed as e:
            assert e.code == "agent_exited"
        else:
            raise AssertionError("a prompt to a stopped agent succeeded")
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
