"""
Issue 21 with the real pi agent in its real bubblewrap sandbox, driven by the scripted
LLM: the agent attacks the source repository of its local session (point 9), races
the server's staging of its working tree with a symlink swapper (point 2), and turns
its checkout's git hostile before the server's run-end snapshot, session.diff,
session.commit and session.push (points 1, 3, 4 and 8; GitHub sessions with the
stand-in).  Each attack: no secret reaches anything the agent can read, no program of
the agent's runs as the server, the source repository's objects and refs change only
by the server's commit, and the session goes on.
"""

import json
import subprocess

import pytest_twisted

from tests.support.fakegithub import TEST_TOKEN, make_repository
from tests.support.fakellm import Reply, Text, ToolCall
from tests.support.server import TOKEN
from tests.support.wsclient import CallFailed

DOTENV_MARKER = "dotenv-value-4f1c9e"
MIN_SWAPS = 300
PADDING = 2000
DIFFS = 6  # after each of two runs
# What the agent's git programs would do if the server ran them: leave a mark outside
# the sandbox (where the agent cannot write).
TRAPS = ("filter-clean", "filter-smudge", "textconv", "fsmonitor", "gpg", "nested-fsmonitor")
HOOKS = ("pre-commit", "commit-msg", "post-commit", "pre-push", "reference-transaction")

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


def plant_secrets(data_dir) -> tuple[bytes, ...]:
    (data_dir / "server-token").write_text(TOKEN + "\n")
    (data_dir / ".env").write_text(f"ATTACK_TEST_VALUE={DOTENV_MARKER}\n")
    return (TOKEN.encode(), DOTENV_MARKER.encode(), TEST_TOKEN.encode())


def hostile_git(markers, proxy_port: int) -> str:
    """The agent's bash making its checkout's git hostile: filter and diff drivers, an
    fsmonitor, a signing program and hooks (point 1), a nested repository with its own
    fsmonitor (3), a proxy (4), ``HEAD`` at ``main`` (8)."""
    lines = []
    for name in (*TRAPS, *HOOKS):
        lines.append(
            f"printf '#!/bin/sh\\ntouch {markers}/{name}.ran\\ncat\\n' > .git/{name}.sh"
            f" && chmod +x .git/{name}.sh"
        )
    config = {
        "filter.evil.clean": "filter-clean",
        "filter.evil.smudge": "filter-smudge",
        "diff.evil.textconv": "textconv",
        "core.fsmonitor": "fsmonitor",
        "gpg.program": "gpg",
    }
    lines += [f"git config {key} $PWD/.git/{name}.sh" for key, name in config.items()]
    lines += [
        "git config filter.evil.required true",
        "git config commit.gpgSign true",
        f"git config http.proxy http://127.0.0.1:{proxy_port}",
        "mkdir -p .git/hooks",
        *(f"cp .git/{hook}.sh .git/hooks/{hook}" for hook in HOOKS),
        "echo '* filter=evil diff=evil' > .gitattributes",
        "git init -q nested && echo n > nested/n.txt && git -C nested add n.txt"
        " && git -C nested -c user.name=a -c user.email=a@x commit -qm n"
        " && git -C nested config core.fsmonitor $PWD/.git/nested-fsmonitor.sh",
        "echo 'ref: refs/heads/main' > .git/HEAD",
        "echo hostile",
    ]
    return " && ".join(lines)


def pad(checkout) -> None:
    """Files for the agent to commit: git checks each tracked file after it has listed
    the untracked ones and before it reads them, which leaves a swapper time to swap."""
    (checkout / "pad").mkdir()
    for n in range(PADDING):
        (checkout / "pad" / f"f{n:04}").write_text(f"{n}\n")


def start_swapper(checkout, target) -> str:
    """What the agent's bash runs: a swapper in the background exchanging ``sub`` (a
    directory holding files named as the data dir's) with a link to ``target`` (outside
    the sandbox: it leads nowhere there)."""
    (checkout / "sub").mkdir()
    for name in ("server-token", ".env"):
        (checkout / "sub" / name).write_text("harmless\n")
    (checkout / ".git" / "swap.py").write_text(SWAPPER)
    state = checkout / ".git"
    return (
        f"ln -s {target} link && (python3 .git/swap.py sub link {state}/swaps {state}/stop"
        f" {state}/done </dev/null >/dev/null 2>&1 &) && echo started"
    )


def stop_swapper(checkout) -> str:
    state = checkout / ".git"
    return (
        f"touch {state}/stop; while [ ! -e {state}/done ]; do sleep 0.01; done; cat {state}/swaps"
    )


async def race(client, fake_llm, session_id, runs: int, diffs: int) -> None:
    """Run ends and session.diff, each staging the working tree while it swaps."""
    for _ in range(runs):
        await prompt(client, fake_llm, session_id, Text("another run"))
        for _ in range(diffs):
            try:
                # The whole tree is staged; only one file's diff is sent.
                await client.call("session.diff", {"paths": ["app.py"]}, session_id=session_id)
            except CallFailed as e:
                # git may trip over a directory that turns into a link under it: a
                # clean error answer, nothing of the server's read.
                assert e.code == "git_error", e


def assert_no_secret(secrets, fake_llm, checkout, *stores) -> None:
    """Not in any object of the stores the agent can read, nor any file of its checkout,
    nor anything the agent told the model."""
    for store in (checkout, *stores):
        objects = all_objects(store)
        assert not any(secret in objects for secret in secrets), store
    words = [arg for secret in secrets for arg in ("-e", secret.decode())]
    grep = subprocess.run(["grep", "-rlF", *words, str(checkout)], capture_output=True)
    assert grep.returncode == 1, grep.stdout
    told = json.dumps(fake_llm.requests).encode()
    assert not any(secret in told for secret in secrets)


@pytest_twisted.ensureDeferred
async def test_a_local_session_s_agent_cannot_touch_the_source_nor_reach_the_server(
    make_pi_server, agent_dir, fake_llm, tmp_path, proxy_trap
):
    secrets = plant_secrets(agent_dir.path)
    markers = tmp_path / "markers"
    markers.mkdir()
    source = make_repository(
        str(tmp_path / "source"), default_branch="main", files={"app.py": "x = 1\n"}
    )
    (agent_dir.path / "repos.json").write_text(
        json.dumps({"repos": [{"id": "src", "name": "Source", "path": source}]})
    )
    server = make_pi_server()
    assert server.service.config.sandbox == "bwrap"
    client = await server.client()
    session_id = (await client.call("session.create", {"mode": "code", "repoId": "src"}))[
        "sessionId"
    ]
    branch = f"pi/session-{session_id}"
    checkout = server.sessions.sessions[session_id].cwd
    before = repository_state(source)
    main = git(source, "rev-parse", "main").strip()
    pad(checkout)

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
                "echo hostile | git hash-object -w --stdin && echo new > new.txt"
                " && git add new.txt pad"
                " && git -c user.name=a -c user.email=a@x commit -qm agent && git status --short"
                " && git log --format=%s -1 && git log --format=%s main",
            ),
        ),
        # (After the calls above: pi may run one reply's calls at the same time.)
        Reply(bash("swapper", start_swapper(checkout, agent_dir.path))),
        Text("attacked"),
    )
    # Point 2: run ends and diffs while it swaps.
    await race(client, fake_llm, session_id, runs=2, diffs=DIFFS)
    await prompt(
        client, fake_llm, session_id, Reply(bash("stop", stop_swapper(checkout))), Text("stopped")
    )

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
    assert_no_secret(secrets, fake_llm, checkout, source)

    # Points 1, 3, 8: the agent's git turned hostile, then a run end and the client's
    # diff, commit and push.
    await prompt(
        client,
        fake_llm,
        session_id,
        Reply(bash("hostile", hostile_git(markers, proxy_trap.port))),
        Text("planted"),
    )
    assert tool_results(fake_llm)["hostile"].rstrip().endswith("hostile")
    diff = await client.call("session.diff", session_id=session_id)
    assert {".gitattributes", "nested", "new.txt"} <= {f["path"] for f in diff["files"]}
    committed = await client.call("session.commit", {"message": "work"}, session_id=session_id)
    pushed = await client.call("session.push", session_id=session_id)
    assert pushed["pushed"] is False
    assert sorted(path.name for path in markers.iterdir()) == []
    assert proxy_trap.received == []
    # On the session's branch only, in the clone and, published, in the source.
    assert committed["branch"] == branch
    assert git(source, "rev-parse", branch).strip() == committed["commit"]
    assert git(source, "log", "--format=%s", branch).splitlines() == [
        "work",
        "agent",
        "Initial commit",
    ]
    assert git(source, "rev-parse", "main").strip() == main
    assert git(checkout, "rev-parse", "main").strip() == main
    refs, _ = repository_state(source)
    changed = set(refs.splitlines()) ^ set(before[0].splitlines())
    assert {line.rsplit(None, 1)[-1] for line in changed} == {f"refs/heads/{branch}"}
    assert git(source, "show", f"{committed['commit']}:app.py") == "x = 1\n"
    assert_no_secret(secrets, fake_llm, checkout, source)

    # The session goes on.
    asked = len(fake_llm.requests)
    await prompt(client, fake_llm, session_id, Text("still here"))
    assert len(fake_llm.requests) == asked + 1


@pytest_twisted.ensureDeferred
async def test_a_github_session_s_agent_reaches_no_token_and_runs_nothing_as_the_server(
    make_pi_server, agent_dir, fake_llm, fake_github, tmp_path, proxy_trap
):
    secrets = plant_secrets(agent_dir.path)
    markers = tmp_path / "markers"
    markers.mkdir()
    repo = fake_github.add_repo("octo/app", default_branch="main", files={"app.py": "x = 1\n"})
    server = make_pi_server(
        "--github-api-url", fake_github.api_url, environ={"GITHUB_TOKEN": TEST_TOKEN}
    )
    client = await server.client()
    await client.call("repos.list")
    session_id = (await client.call("session.create", {"mode": "code", "repoId": "octo/app"}))[
        "sessionId"
    ]
    branch = f"pi/session-{session_id}"
    checkout = server.sessions.sessions[session_id].cwd
    main = git(repo.bare_path, "rev-parse", "main").strip()
    pad(checkout)

    # Point 2 in a clone of GitHub's: the swap race against run ends and diffs.
    await prompt(
        client,
        fake_llm,
        session_id,
        Reply(bash("pad", "git add pad && git -c user.name=a -c user.email=a@x commit -qm pad")),
        Reply(bash("swapper", start_swapper(checkout, agent_dir.path))),
        Text("swapping"),
    )
    await race(client, fake_llm, session_id, runs=1, diffs=DIFFS)
    await prompt(
        client, fake_llm, session_id, Reply(bash("stop", stop_swapper(checkout))), Text("stopped")
    )
    swaps = int(tool_results(fake_llm)["stop"].strip().splitlines()[-1])
    assert swaps >= MIN_SWAPS, swaps
    assert_no_secret(secrets, fake_llm, checkout)

    # Points 1, 4, 8, then the client's diff, commit and push.
    await prompt(
        client,
        fake_llm,
        session_id,
        Reply(bash("hostile", hostile_git(markers, proxy_trap.port))),
        Text("planted"),
    )
    assert tool_results(fake_llm)["hostile"].rstrip().endswith("hostile")
    diff = await client.call("session.diff", session_id=session_id)
    assert {".gitattributes", "nested"} <= {f["path"] for f in diff["files"]}
    committed = await client.call("session.commit", {"message": "work"}, session_id=session_id)
    pushed = await client.call("session.push", session_id=session_id)
    assert sorted(path.name for path in markers.iterdir()) == []
    assert proxy_trap.received == []  # never saw the push, nor its Authorization
    assert committed["branch"] == branch and pushed["commit"] == committed["commit"]
    assert git(repo.bare_path, "rev-parse", branch).strip() == committed["commit"]
    assert git(repo.bare_path, "rev-parse", "main").strip() == main
    assert git(checkout, "rev-parse", "main").strip() == main
    assert_no_secret(secrets, fake_llm, checkout)

    asked = len(fake_llm.requests)
    await prompt(client, fake_llm, session_id, Text("still here"))
    assert len(fake_llm.requests) == asked + 1
