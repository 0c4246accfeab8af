"""
``kill -9`` of the server process in the middle of creating and of deleting a
code session: the next start undoes the create or finishes the delete, so no
session directory, clone, worktree or ``pi/session-*`` branch is left behind.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fakegithub import make_repository
from tests.support.processes import wait_until
from tests.support.server import session_directories
from tests.support.serverprocess import RawRpc, ServerProcess

TOKEN = "kill-during-lifecycle-token"
STUB = Path(__file__).resolve().parents[1] / "support" / "stubagent.py"
SAFETY_NET = 60


def git(repo, *args) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def session_branches(repo) -> list[str]:
    return git(repo, "branch", "--list", "pi/session-*", "--format=%(refname:short)").split()


def worktrees(repo) -> list[str]:
    return [
        line.split(" ", 1)[1]
        for line in git(repo, "worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ")
    ]


@pytest.fixture
def setup(tmp_path):
    repo = tmp_path / "repo"
    make_repository(str(repo))
    # An agent slow to stop (it ignores end of input and SIGTERM): a delete takes seconds.
    agent = tmp_path / "agent"
    agent.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && exec echo 1.6.0\n'
        f'exec {sys.executable} {STUB} --ignore-eof --ignore-term "$@"\n'
    )
    agent.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "repos.json").write_text(
        json.dumps({"repos": [{"id": "web", "name": "Web", "path": str(repo)}]})
    )
    return repo, agent, data


def start(tmp_path, agent, environ=None) -> ServerProcess:
    # The stand-in agent is no pi a sandbox could run (nor warm a compile cache with: it
    # ignores the end of its input on purpose).
    return ServerProcess(
        tmp_path, "--auth-token", TOKEN, "--sandbox", "none", pi=str(agent), environ=environ
    ).start()


def no_trace_left(repo, data) -> bool:
    return (
        session_branches(repo) == []
        and worktrees(repo) == [str(repo)]
        and session_directories(data) == []
    )


def test_kill_9_during_create_is_undone_at_start(tmp_path, setup):
    repo, agent, data = setup
    # The clone's checkout runs this hook (from git's template dir, which the server's
    # environment names): the create stops there until released.
    hook = tmp_path / "templates" / "hooks" / "post-checkout"
    hook.parent.mkdir(parents=True)
    started, release = tmp_path / "hook-started", tmp_path / "hook-release"
    done = tmp_path / "hook-done"
    hook.write_text(
        f"#!/bin/sh\ntouch {started}\nwhile [ ! -e {release} ]; do sleep 0.05; done\ntouch {done}\n"
    )
    hook.chmod(0o755)
    server = start(tmp_path, agent, {"GIT_TEMPLATE_DIR": str(hook.parents[1])})
    client = RawRpc(server.port, TOKEN)
    client.send("session.create", {"mode": "code", "repoId": "web"})
    wait_until(started.exists, SAFETY_NET, "the clone to be checked out")
    server.kill()
    server.kill_agents()
    release.touch()
    # git finishes on its own: the clone and the branch exist, the session does not.
    wait_until(done.exists, SAFETY_NET, "git to finish")
    assert len(session_branches(repo)) == 1 and len(session_directories(data)) == 1
    hook.unlink()

    restarted = start(tmp_path, agent)
    try:
        wait_until(lambda: no_trace_left(repo, data), SAFETY_NET, "the create to be undone")
        again = RawRpc(restarted.port, TOKEN)
        assert again.call("session.list")["sessions"] == []
        again.close()
    finally:
        restarted.stop()


def test_kill_9_during_delete_is_finished_at_start(tmp_path, setup):
    repo, agent, data = setup
    server = start(tmp_path, agent)
    client = RawRpc(server.port, TOKEN)
    session_id = client.call("session.create", {"mode": "code", "repoId": "web"})["sessionId"]
    clone = data / "sessions" / session_id / "repo" / ".git"
    assert clone.is_dir() and len(session_branches(repo)) == 1
    record = data / "sessions" / session_id / "session.json"
    client.send("session.delete", {"sessionId": session_id})
    # The delete has begun (the session's record is gone) and waits for the agent to stop.
    wait_until(lambda: not record.exists(), SAFETY_NET, "the delete to begin")
    server.kill()
    # An agent a killed server leaves behind is not this test's subject.
    server.kill_agents()
    assert clone.is_dir()

    restarted = start(tmp_path, agent)
    try:
        wait_until(lambda: no_trace_left(repo, data), SAFETY_NET, "the delete to be finished")
        again = RawRpc(restarted.port, TOKEN)
        assert again.call("session.list")["sessions"] == []
        again.close()
    finally:
        restarted.stop()
