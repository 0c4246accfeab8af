"""
Issue 21 with the real pi agent in its real bubblewrap sandbox, driven by the scripted
LLM: the agent attacks the source repository of its local session (point 9) and races
the server's staging of its working tree with a symlink swapper (point 2).  Each
attack: no secret reaches anything the agent can read, the source repository's
objects and refs are unchanged, and the session goes on.
"""

import json
import subprocess

import pytest_twisted

from tests.support.fakegithub import make_repository
from tests.support.fakellm import Reply, Text, ToolCall
from tests.support.server import TOKEN
from tests.support.wsclient import CallFailed

DOTENV_MARKER = "dotenv-value-4f1c9e"
MIN_SWAPS = 300
PADDING = 500
DIFFS = 6  # after each of two runs

# Exchanges a directory of the checkout with a symlink to the data dir, as fast as it
# can, until told to stop; counts the swaps it made.
SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
directory, link, count, stop, done = sys.argv[1:6]
swaps = 0
while not os.path.exists(stop):
    if libc.renameat2(-100, directory.encode(), -100, link.encode(), 2) == 0:
        swaps += 1
    if swaps % 50 == 0:
        time.sleep(0)
with open(count, "w") as f:
    f.write(str(swaps))
open(done, "w").close()
"""


def git(repo, *args) -> str:
    return subprocess.run(
        ["git", "-c", "core.fsmonitor=false", "-C", str(repo), *args],
        capture_output=True,
        check=True,
        env={"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "PATH": "/usr/bin:/bin"},
    ).stdout.decode("utf-8", "replace")


def all_objects(repo) -> bytes:
    """Every object of ``repo``'s store (and its alternates), loose or packed, whole."""
    return subprocess.run(
        ["git", "-C", str(repo), "cat-file", "--batch-all-objects", "--batch"],
        capture_output=True,
        check=True,
    ).stdout


def repository_state(repo) -> tuple[str, str]:
    """Its refs and its object set; git fsck must pass."""
    git(repo, "fsck", "--strict", "--no-dangling")
    objects = git(repo, "cat-file", "--batch-all-objects", "--batch-check")
    return git(repo, "for-each-ref"), objects


def is_event(event_type, session_id):
    return lambda f: f["type"] == event_type and f["sessionId"] == session_id


def tool_results(fake_llm) -> dict[str, str]:
    """Every tool result the agent sent to the LLM, by its call's id."""
    results = {}
    for request in fake_llm.requests:
        for message in request["messages"]:
            if message["role"] == "tool":
                content = message["content"]
                text = content if isinstance(content, str) else json.dumps(content)
                results[message["tool_call_id"]] = text
    return results


def bash(call_id: str, command: str) -> ToolCall:
    return ToolCall("bash", {"command": command}, id=call_id)


async def prompt(client, fake_llm, session_id, *replies) -> None:
    """One prompt answered with ``replies``, until its run has settled."""
    last = max((f["seq"] for f in client.event_frames(session_id)), default=-1)
    fake_llm.script(*replies)
    await client.call("prompt", {"message": "go on"}, session_id=session_id)
    await client.wait_for_event(
        lambda f: is_event("agent_settled", session_id)(f) and f["seq"] > last
    )


@pytest_twisted.ensureDeferred
async def test_a_local_session_s_agent_cannot_touch_the_source_nor_race_staging(
    make_pi_server, agent_dir, fake_llm, tmp_path
):
    data_dir = agent_dir.path
    (data_dir / "server-token").write_text(TOKEN + "\n")
    (data_dir / ".env").write_text(f"ATTACK_TEST_VALUE={DOTENV_MARKER}\n")
    source = make_repository(
        str(tmp_path / "source"), default_branch="main", files={"app.py": "x = 1\n"}
    )
    (data_dir / "repos.json").write_text(
        json.dumps({"repos": [{"id": "src", "name": "Source", "path": source}]})
    )
    server = make_pi_server()
    assert server.service.config.sandbox == "bwrap"
    client = await server.client()
    session_id = (await client.call("session.create", {"mode": "code", "repoId": "src"}))[
        "sessionId"
    ]
    checkout = server.sessions.sessions[session_id].cwd
    before = repository_state(source)
    main = git(source, "rev-parse", "main").strip()

    # What the swapper exchanges: a directory holding files named as the data dir's
    # (and many more after them, so that git lists it long before it reads them), and
    # a link to the data dir (outside the sandbox: it leads nowhere there).
    (checkout / "sub").mkdir()
    for name in ("server-token", ".env", *(f"t{n:04}" for n in range(PADDING))):
        (checkout / "sub" / name).write_text("harmless\n")
    (checkout / ".git" / "swap.py").write_text(SWAPPER)
    state = checkout / ".git"
    swapper = (
        f"ln -s {data_dir} link && (python3 .git/swap.py sub link {state}/swaps {state}/stop"
        f" {state}/done </dev/null >/dev/null 2>&1 &) && echo started"
    )
    await prompt(
        client,
        fake_llm,
        session_id,
        Reply(
            # Point 9: the user's history, refs and object store.
            bash("delete", f"find {source}/.git/objects -type f -delete; echo rc=$?"),
            bash("ref", f"echo {main} > {source}/.git/refs/heads/evil; echo rc=$?"),
            bash("alternate", f"echo /tmp > {source}/.git/objects/info/alternates; echo rc=$?"),
            # Its own objects and commits go to its clone; main is readable there.
            bash(
                "commit",
                "echo hostile | git hash-object -w --stdin && echo new > new.txt && git add new.txt"
                " && git -c user.name=a -c user.email=a@x commit -qm agent && git status --short"
                " && git log --format=%s -1 && git log --format=%s main",
            ),
        ),
        # (After the calls above: pi may run one reply's calls at the same time.)
        Reply(bash("swapper", swapper)),
        Text("attacked"),
    )
    # Point 2: more run ends and diffs, each staging the working tree while it swaps.
    diffs = {"answered": 0, "refused": 0}
    for _ in range(2):
        await prompt(client, fake_llm, session_id, Text("another run"))
        for _ in range(DIFFS):
            try:
                diff = await client.call("session.diff", session_id=session_id)
            except CallFailed as e:
                # git may trip over a directory that turns into a link under it: a
                # clean error answer, nothing staged.
                assert e.code == "git_error", e
                diffs["refused"] += 1
            else:
                assert "new.txt" in {f["path"] for f in diff["files"]}
                diffs["answered"] += 1
    stop = (
        f"touch {state}/stop; while [ ! -e {state}/done ]; do sleep 0.01; done; cat {state}/swaps"
    )
    await prompt(client, fake_llm, session_id, Reply(bash("stop", stop)), Text("stopped"))

    results = tool_results(fake_llm)
    for call_id in ("delete", "ref", "alternate"):
        assert "Read-only file system" in results[call_id] or "No such file" in results[call_id]
        assert "rc=0" not in results[call_id], results[call_id]
    assert results["commit"].endswith("\nagent\nInitial commit\n"), results["commit"]
    swaps = int(results["stop"].strip().splitlines()[-1])
    assert swaps >= MIN_SWAPS, swaps

    # The source repository: the same refs, the same objects, history intact.
    assert repository_state(source) == before
    assert git(source, "log", "--format=%s", "main").strip() == "Initial commit"
    # No secret in anything the agent can read or was told.
    secrets = (TOKEN.encode(), DOTENV_MARKER.encode())
    for store in (checkout, source):
        objects = all_objects(store)
        assert not any(secret in objects for secret in secrets)
    grep = subprocess.run(
        ["grep", "-rlF", "-e", TOKEN, "-e", DOTENV_MARKER, str(checkout)], capture_output=True
    )
    assert grep.returncode == 1, grep.stdout
    told = json.dumps(fake_llm.requests)
    assert TOKEN not in told and DOTENV_MARKER not in told

    # The session goes on.
    asked = len(fake_llm.requests)
    await prompt(client, fake_llm, session_id, Text("still here"))
    assert len(fake_llm.requests) == asked + 1
