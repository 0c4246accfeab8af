"""
repos.list and code sessions end to end: real git, the real pi agent and its
tools, the scripted LLM, and a GitHub stand-in whose repos clone over HTTP.
"""

import json
import os
import subprocess

import pytest
import pytest_twisted

from tests.support.fakegithub import TEST_TOKEN, make_repository, run_git
from tests.support.fakellm import Reply, Text, ToolCall
from tests.support.server import session_directories
from tests.support.wsclient import CallFailed, is_type

GITHUB_TOKEN = TEST_TOKEN


def write_repos(data_dir, entries):
    (data_dir / "repos.json").write_text(json.dumps({"repos": entries}))


@pytest.fixture
def local_repo(tmp_path):
    return make_repository(
        str(tmp_path / "source"),
        default_branch="trunk",
        files={"README.md": "# source\n", "src/app.py": "x = 1\n"},
    )


@pytest.fixture
def github_server(make_pi_server, fake_github):
    return make_pi_server(
        "--github-api-url", fake_github.api_url, environ={"GITHUB_TOKEN": GITHUB_TOKEN}
    )


@pytest.fixture
def impatient_github_server(make_pi_server, fake_github):
    # For clones that hang: a short timeout (a clone that is to succeed gets the default,
    # which a loaded machine needs).
    return make_pi_server(
        "--github-api-url",
        fake_github.api_url,
        "--clone-timeout",
        "3",
        environ={"GITHUB_TOKEN": GITHUB_TOKEN},
    )


def git_out(*args, cwd):
    return run_git(*args, cwd=cwd).strip()


@pytest_twisted.ensureDeferred
async def test_local_code_session_writes_in_its_own_checkout(
    pi_server, fake_llm, local_repo, tmp_path
):
    (tmp_path / "plain-dir").mkdir()
    write_repos(
        pi_server.agent_dir.path,
        [
            {"id": "src", "name": "Source", "path": local_repo},
            {"id": "broken", "name": "Broken", "path": str(tmp_path / "plain-dir")},
        ],
    )
    client = await pi_server.client()
    listing = await client.call("repos.list")
    assert [r["id"] for r in listing["repos"]] == ["src"]
    assert listing["repos"][0]["defaultBranch"] == "trunk"
    assert listing["repos"][0]["path"] == local_repo
    assert any("broken" in w for w in listing["warnings"])

    with pytest.raises(CallFailed) as missing:
        await client.call("session.create", {"mode": "code"})
    assert missing.value.code == "invalid_params"
    with pytest.raises(CallFailed) as unknown:
        await client.call("session.create", {"mode": "code", "repoId": "../etc"})
    assert unknown.value.code == "not_found"

    fake_llm.script(
        Reply(ToolCall("write", {"path": "notes.txt", "content": "from the agent\n"})),
        Text("written"),
    )
    session_id = (await client.call("session.create", {"mode": "code", "repoId": "src"}))[
        "sessionId"
    ]
    (entry,) = (await client.call("session.list", {"repoId": "src"}))["sessions"]
    checkout = entry["worktreePath"]
    assert entry["repoId"] == "src" and checkout.endswith(f"sessions/{session_id}/repo")
    assert (await client.call("session.list", {"repoId": "other"}))["sessions"] == []

    await client.call("prompt", {"message": "write a note"}, session_id=session_id)
    await client.wait_for_event(is_type("agent_settled", session_id))
    # Code sessions get pi's built-in tools.
    tools = {t["function"]["name"] for t in fake_llm.requests[0]["tools"]}
    assert {"bash", "read", "write", "edit"} <= tools
    assert open(os.path.join(checkout, "notes.txt")).read() == "from the agent\n"
    assert git_out("branch", "--show-current", cwd=checkout) == f"pi/session-{session_id}"
    assert git_out("status", "--porcelain", cwd=local_repo) == ""
    assert not os.path.exists(os.path.join(local_repo, "notes.txt"))

    # A second session on the same repo does not see the first one's edits.
    other_id = (await client.call("session.create", {"mode": "code", "repoId": "src"}))["sessionId"]
    other = pi_server.sessions.sessions[other_id].cwd
    assert not (other / "notes.txt").exists()
    assert git_out("branch", "--show-current", cwd=str(other)) == f"pi/session-{other_id}"

    # Delete: a branch with commits is kept, one without is removed.
    run_git("add", "notes.txt", cwd=checkout)
    run_git("commit", "-qm", "agent note", cwd=checkout)
    kept = await client.call("session.delete", {"sessionId": session_id})
    assert kept == {"branchKept": True, "branch": f"pi/session-{session_id}"}
    assert not os.path.exists(checkout)
    assert git_out("branch", "--list", f"pi/session-{session_id}", cwd=local_repo)
    removed = await client.call("session.delete", {"sessionId": other_id})
    assert removed["branchKept"] is False
    assert git_out("branch", "--list", f"pi/session-{other_id}", cwd=local_repo) == ""
    assert git_out("worktree", "list", "--porcelain", cwd=local_repo).count("worktree ") == 1


@pytest_twisted.ensureDeferred
async def test_github_code_session_keeps_the_token_off_disk(
    github_server, fake_github, fake_llm, captured_log
):
    fake_github.add_repo(
        "octo/app", default_branch="main", files={"README.md": "# app\n", "lib/mod.py": "y = 2\n"}
    )
    fake_github.add_listing_repos(3)
    client = await github_server.client()
    repos = (await client.call("repos.list"))["repos"]
    app = next(r for r in repos if r["id"] == "octo/app")
    assert app["fullName"] == "octo/app" and app["defaultBranch"] == "main"
    assert app["owner"] == "octo" and "cloneUrl" in app

    fake_llm.script(
        Reply(
            ToolCall(
                "bash",
                {
                    "command": "git branch --show-current; ls;"
                    " env | grep ghp_ || echo no-token-in-env"
                },
            )
        ),
        Text("looked"),
    )
    created = await client.call("session.create", {"mode": "code", "repoId": "octo/app"})
    session_id = created["sessionId"]
    progress = [f for f in client.event_frames(session_id) if f["type"] == "session_progress"]
    assert progress and progress[0]["payload"]["stage"] == "clone"

    await client.call("prompt", {"message": "look around"}, session_id=session_id)
    await client.wait_for_event(is_type("agent_settled", session_id))
    tool_result = json.dumps(fake_llm.requests[1]["messages"][-1])
    assert f"pi/session-{session_id}" in tool_result
    assert "README.md" in tool_result and "lib" in tool_result
    assert "no-token-in-env" in tool_result  # the agent never gets GITHUB_TOKEN

    sessions_dir = github_server.agent_dir.path / "sessions"
    found = subprocess.run(
        ["grep", "-r", "-l", "-a", GITHUB_TOKEN, str(sessions_dir)], capture_output=True, text=True
    )
    assert found.stdout == ""
    remote = git_out("remote", "get-url", "origin", cwd=str(sessions_dir / session_id / "repo"))
    assert GITHUB_TOKEN not in remote
    assert captured_log and not any(GITHUB_TOKEN in line for line in captured_log)
    assert GITHUB_TOKEN not in json.dumps(client.frames)


@pytest_twisted.ensureDeferred
async def test_failed_clones_leave_nothing_behind(impatient_github_server, fake_github):
    repo = fake_github.add_repo("octo/app")
    client = await impatient_github_server.client()
    await client.call("repos.list")

    fake_github.git_mode = "hang"
    with pytest.raises(CallFailed) as timed_out:
        await client.call("session.create", {"mode": "code", "repoId": "octo/app"})
    assert timed_out.value.code == "git_error" and "timed out" in timed_out.value.message
    assert session_directories(impatient_github_server.agent_dir.path) == []
    assert (await client.call("session.list"))["sessions"] == []

    fake_github.git_mode = "ok"
    os.rename(repo.bare_path, repo.bare_path + ".gone")  # the clone URL now answers 404
    with pytest.raises(CallFailed) as bad_url:
        await client.call("session.create", {"mode": "code", "repoId": "octo/app"})
    assert bad_url.value.code == "git_error"
    assert session_directories(impatient_github_server.agent_dir.path) == []
    assert GITHUB_TOKEN not in bad_url.value.message


@pytest.mark.parametrize(
    "mode, fragment",
    [
        ("unauthorized", "rejected the token"),
        ("rate_limited", "rate limit"),
        ("server_error", "500"),
        ("hang", "did not answer"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_github_errors(make_pi_server, agent_dir, fake_github, mode, fragment, local_repo):
    environ = {"GITHUB_TOKEN": "wrong-token" if mode == "unauthorized" else GITHUB_TOKEN}
    if mode != "unauthorized":
        fake_github.mode = mode
    server = make_pi_server(
        "--github-api-url", fake_github.api_url, "--github-timeout", "1", environ=environ
    )
    client = await server.client()
    with pytest.raises(CallFailed) as failed:
        await client.call("repos.list")
    assert failed.value.code == "github_error" and fragment in failed.value.message
    write_repos(agent_dir.path, [{"id": "src", "name": "Source", "path": local_repo}])
    listing = await client.call("repos.list")
    assert [r["id"] for r in listing["repos"]] == ["src"]
    assert any(fragment in w for w in listing["warnings"])
