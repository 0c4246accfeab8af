"""
A code session's work from the client's side: the real pi agent edits, creates
and deletes files (scripted LLM), then session.diff / files / read_file show it,
files_changed announces it, and session.commit / push / pull_request ship it to
the GitHub stand-in (smart HTTP into a bare repository, real git).
"""

import json
import os
import subprocess

import pytest
import pytest_twisted

from tests.support.fakegithub import TEST_TOKEN, make_repository, run_git
from tests.support.fakellm import Reply, Text, ToolCall
from tests.support.wsclient import CallFailed

APP = "".join(f"line {n}\n" for n in range(1, 21))
EDITED_APP = APP.replace("line 5\n", "line five\n").replace("line 15\n", "") + "line 21\n"


def write_repos(data_dir, entries):
    (data_dir / "repos.json").write_text(json.dumps({"repos": entries}))


def git_out(*args, cwd):
    return run_git(*args, cwd=cwd).strip()


def event_after(client, event_type, session_id, after_seq=0):
    return client.wait_for_event(
        lambda f: f["type"] == event_type and f["sessionId"] == session_id and f["seq"] > after_seq
    )


def events(client, event_type, session_id):
    return [f for f in client.event_frames(session_id) if f["type"] == event_type]


def agent_edits():
    """One run: edit src/app.py, create notes/todo.txt, delete old.txt."""
    return (
        Reply(
            ToolCall("write", {"path": "src/app.py", "content": EDITED_APP}),
            ToolCall("write", {"path": "notes/todo.txt", "content": "ship it\nsoon\n"}),
            ToolCall("bash", {"command": "rm old.txt"}),
        ),
        Text("edited, created and deleted"),
    )


@pytest.fixture
def local_repo(tmp_path):
    return make_repository(
        str(tmp_path / "source"),
        default_branch="trunk",
        files={"README.md": "# source\n", "src/app.py": APP, "old.txt": "obsolete\n"},
    )


@pytest_twisted.async_yield_fixture
async def local_session(pi_server, local_repo):
    write_repos(pi_server.agent_dir.path, [{"id": "src", "name": "Source", "path": local_repo}])
    client = await pi_server.client()
    created = await client.call("session.create", {"mode": "code", "repoId": "src"})
    session_id = created["sessionId"]
    yield client, session_id, str(pi_server.sessions.sessions[session_id].cwd)


@pytest_twisted.ensureDeferred
async def test_diff_shows_what_the_agent_edited_created_and_deleted(
    local_session, fake_llm, local_repo, tmp_path
):
    client, session_id, checkout = local_session
    fake_llm.script(*agent_edits())
    await client.call("prompt", {"message": "tidy up"}, session_id=session_id)
    changed = await event_after(client, "files_changed", session_id)
    assert os.path.exists(os.path.join(checkout, "notes/todo.txt"))

    diff = await client.call("session.diff", session_id=session_id)
    assert diff["files"] == [
        {"path": "notes/todo.txt", "status": "added", "additions": 2, "deletions": 0},
        {"path": "old.txt", "status": "deleted", "additions": 0, "deletions": 1},
        {"path": "src/app.py", "status": "modified", "additions": 2, "deletions": 2},
    ]
    assert diff["truncated"] is False
    assert diff["base"] == git_out("rev-parse", "trunk", cwd=local_repo)
    assert changed["payload"]["files"] == diff["files"]
    # The agent's index is untouched: the new file is still untracked, nothing is staged.
    assert run_git("status", "--porcelain", cwd=checkout).splitlines() == [
        " D old.txt",
        " M src/app.py",
        "?? notes/",
    ]

    # The text applies cleanly onto the base and gives the agent's files.
    base_copy = str(tmp_path / "base-copy")
    run_git("clone", "--quiet", "--branch", "trunk", local_repo, base_copy)
    patch = tmp_path / "session.patch"
    patch.write_text(diff["diff"])
    run_git("apply", "--index", str(patch), cwd=base_copy)
    for name in ("src/app.py", "notes/todo.txt"):
        assert (
            open(os.path.join(base_copy, name)).read() == open(os.path.join(checkout, name)).read()
        )
    assert not os.path.exists(os.path.join(base_copy, "old.txt"))

    cut = await client.call("session.diff", {"maxBytes": 100}, session_id=session_id)
    assert cut["truncated"] is True and len(cut["diff"].encode()) <= 100
    assert cut["diff"] == diff["diff"][: len(cut["diff"])]
    assert cut["files"] == diff["files"]

    only = await client.call(
        "session.diff", {"paths": ["src"], "contextLines": 0}, session_id=session_id
    )
    assert [f["path"] for f in only["files"]] == ["src/app.py"]
    assert "\n line 4\n" not in only["diff"] and "-line 5\n+line five\n" in only["diff"]

    with pytest.raises(CallFailed) as unknown_base:
        await client.call("session.diff", {"base": "no-such-branch"}, session_id=session_id)
    assert unknown_base.value.code == "invalid_params"


@pytest_twisted.ensureDeferred
async def test_files_changed_follows_runs_that_wrote_and_only_those(local_session, fake_llm):
    client, session_id, checkout = local_session
    fake_llm.script(
        Reply(ToolCall("write", {"path": "a.txt", "content": "a\n"})),
        Text("one"),
        Text("nothing to change"),
        Reply(ToolCall("write", {"path": "b.txt", "content": "b\n"})),
        Text("two"),
    )
    await client.call("prompt", {"message": "write a"}, session_id=session_id)
    first = await event_after(client, "files_changed", session_id)
    assert [f["path"] for f in first["payload"]["files"]] == ["a.txt"]

    await client.call("prompt", {"message": "just talk"}, session_id=session_id)
    quiet_end = await event_after(client, "agent_settled", session_id, first["seq"])
    await client.call("prompt", {"message": "write b"}, session_id=session_id)
    second = await event_after(client, "files_changed", session_id, quiet_end["seq"])
    assert [f["path"] for f in second["payload"]["files"]] == ["a.txt", "b.txt"]
    # Run ends are looked at in order: the quiet run would have reported before this one.
    assert events(client, "files_changed", session_id) == [first, second]


@pytest_twisted.ensureDeferred
async def test_files_changed_after_a_run_that_committed_its_edits(local_session, fake_llm):
    client, session_id, checkout = local_session
    commit = "git add -A && git -c user.name=pi -c user.email=pi@x commit -qm mine"
    fake_llm.script(
        Reply(ToolCall("bash", {"command": f"echo c > c.txt && {commit}"})), Text("committed")
    )
    await client.call("prompt", {"message": "write and commit c"}, session_id=session_id)
    changed = await event_after(client, "files_changed", session_id)
    assert run_git("status", "--porcelain", cwd=checkout) == ""
    assert [f["path"] for f in changed["payload"]["files"]] == ["c.txt"]


@pytest_twisted.ensureDeferred
async def test_files_and_read_file_stay_inside_the_checkout(local_session, pi_server, tmp_path):
    client, session_id, checkout = local_session
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours\n")
    os.symlink(str(outside), os.path.join(checkout, "escape"))
    os.symlink(str(outside / "secret.txt"), os.path.join(checkout, "escape.txt"))
    os.symlink("src/app.py", os.path.join(checkout, "app-link.py"))
    with open(os.path.join(checkout, "blob.bin"), "wb") as f:
        f.write(b"\x89PNG\0\0\x01")

    top = await client.call("session.files", session_id=session_id)
    names = {e["name"]: e for e in top["entries"]}
    assert ".git" not in names
    assert names["src"]["type"] == "directory" and names["README.md"]["type"] == "file"
    assert names["escape"] == {
        "name": "escape",
        "path": "escape",
        "type": "symlink",
        "target": str(outside),
    }
    src = await client.call("session.files", {"path": "src"}, session_id=session_id)
    assert [e["path"] for e in src["entries"]] == ["src/app.py"]

    text = await client.call("session.read_file", {"path": "src/app.py"}, session_id=session_id)
    assert text == {"path": "src/app.py", "size": len(APP), "content": APP, "truncated": False}
    linked = await client.call("session.read_file", {"path": "app-link.py"}, session_id=session_id)
    assert linked["content"] == APP
    head = await client.call(
        "session.read_file", {"path": "src/app.py", "maxBytes": 7}, session_id=session_id
    )
    assert head["content"] == "line 1\n" and head["truncated"] is True
    binary = await client.call("session.read_file", {"path": "blob.bin"}, session_id=session_id)
    assert binary == {"path": "blob.bin", "size": 7, "binary": True}

    refused = [
        ("session.read_file", {"path": "../../../state.json"}),
        ("session.read_file", {"path": "src/../../session.json"}),
        ("session.read_file", {"path": "/etc/passwd"}),
        ("session.read_file", {"path": "escape.txt"}),
        ("session.read_file", {"path": "escape/secret.txt"}),
        ("session.read_file", {"path": ".git/config"}),
        ("session.read_file", {"path": "./.git/HEAD"}),
        ("session.files", {"path": "escape"}),
        ("session.files", {"path": ".."}),
        ("session.files", {"path": ".git"}),
        ("session.diff", {"paths": ["../source"]}),
        ("session.commit", {"message": "x", "paths": ["/etc/passwd"]}),
    ]
    for method, params in refused:
        with pytest.raises(CallFailed) as failed:
            await client.call(method, params, session_id=session_id)
        assert failed.value.code == "invalid_params", (method, params)
        assert "not yours" not in failed.value.message

    with pytest.raises(CallFailed) as missing:
        await client.call("session.read_file", {"path": "nope.txt"}, session_id=session_id)
    assert missing.value.code == "not_found"

    chat_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    for method in ("session.diff", "session.files", "session.commit", "session.push"):
        with pytest.raises(CallFailed) as chat:
            await client.call(method, {"path": "x", "message": "x"}, session_id=chat_id)
        assert chat.value.code == "invalid_state" and "chat session" in chat.value.message


@pytest_twisted.ensureDeferred
async def test_local_session_commits_on_its_branch_in_the_source_repo(
    local_session, fake_llm, local_repo
):
    client, session_id, checkout = local_session
    branch = f"pi/session-{session_id}"
    with pytest.raises(CallFailed) as empty:
        await client.call("session.commit", {"message": "nothing yet"}, session_id=session_id)
    assert empty.value.code == "invalid_state" and "nothing to commit" in empty.value.message

    fake_llm.script(*agent_edits())
    await client.call("prompt", {"message": "tidy up"}, session_id=session_id)
    await event_after(client, "files_changed", session_id)

    first = await client.call(
        "session.commit", {"message": "Just the notes", "paths": ["notes"]}, session_id=session_id
    )
    assert first["files"] == [
        {"path": "notes/todo.txt", "status": "added", "additions": 2, "deletions": 0}
    ]
    rest = await client.call("session.commit", {"message": "The rest"}, session_id=session_id)
    assert [f["path"] for f in rest["files"]] == ["old.txt", "src/app.py"]
    assert [f["status"] for f in rest["files"]] == ["deleted", "modified"]
    assert git_out("status", "--porcelain", cwd=checkout) == ""
    # The worktree's branch lives in the source repository itself.
    assert git_out("rev-parse", branch, cwd=local_repo) == rest["commit"]
    assert git_out("log", "--format=%s", "trunk.." + branch, cwd=local_repo).splitlines() == [
        "The rest",
        "Just the notes",
    ]
    # No git identity on this machine (the tests' HOME): pi-server's own.
    assert (
        git_out("log", "-1", "--format=%an <%ae>", branch, cwd=local_repo)
        == "pi-server <pi-server@localhost>"
    )

    pushed = await client.call("session.push", session_id=session_id)
    assert pushed["pushed"] is False and pushed["branch"] == branch
    assert pushed["repository"] == local_repo
    with pytest.raises(CallFailed) as no_pr:
        await client.call("session.pull_request", {"title": "x"}, session_id=session_id)
    assert no_pr.value.code == "invalid_state" and "GitHub" in no_pr.value.message

    diff = await client.call("session.diff", session_id=session_id)
    assert [f["path"] for f in diff["files"]] == ["notes/todo.txt", "old.txt", "src/app.py"]


@pytest_twisted.ensureDeferred
async def test_commit_push_and_pull_request_on_a_github_session(
    make_pi_server, fake_github, fake_llm, captured_log
):
    server = make_pi_server(
        "--github-api-url",
        fake_github.api_url,
        "--git-author",
        "Pi Bot <bot@example.invalid>",
        environ={"GITHUB_TOKEN": TEST_TOKEN},
    )
    repo = fake_github.add_repo(
        "octo/app", files={"README.md": "# app\n", "src/app.py": APP, "old.txt": "obsolete\n"}
    )
    client = await server.client()
    created = await client.call("session.create", {"mode": "code", "repoId": "octo/app"})
    session_id = created["sessionId"]
    branch = f"pi/session-{session_id}"
    checkout = str(server.sessions.sessions[session_id].cwd)

    with pytest.raises(CallFailed) as nothing:
        await client.call("session.push", session_id=session_id)
    assert nothing.value.code == "invalid_state" and "session.commit" in nothing.value.message

    fake_llm.script(*agent_edits())
    await client.call("prompt", {"message": "tidy up"}, session_id=session_id)
    await event_after(client, "files_changed", session_id)
    committed = await client.call("session.commit", {"message": "Tidy up"}, session_id=session_id)
    assert len(committed["files"]) == 3

    pushed = await client.call("session.push", session_id=session_id)
    assert pushed == {
        "branch": branch,
        "remoteBranch": branch,
        "commit": committed["commit"],
        "repository": "octo/app",
        "pushed": True,
    }
    assert git_out("rev-parse", f"refs/heads/{branch}", cwd=repo.bare_path) == committed["commit"]
    assert (
        git_out("log", "-1", "--format=%an <%ae>|%s", branch, cwd=repo.bare_path)
        == "Pi Bot <bot@example.invalid>|Tidy up"
    )
    stages = {f["payload"]["stage"] for f in events(client, "session_progress", session_id)}
    assert {"commit", "push"} <= stages

    pull = await client.call(
        "session.pull_request",
        {"title": "Tidy up", "body": "Done by pi", "draft": True},
        session_id=session_id,
    )
    assert pull["number"] == 1 and pull["url"] == "https://github.example/octo/app/pull/1"
    (opened,) = fake_github.pull_requests
    assert opened.fields == {
        "title": "Tidy up",
        "head": branch,
        "base": "main",
        "body": "Done by pi",
        "draft": True,
    }

    with pytest.raises(CallFailed) as again:
        await client.call("session.pull_request", {"title": "Again"}, session_id=session_id)
    assert again.value.code == "github_error"
    assert "A pull request already exists for octo:" + branch in again.value.message
    fake_github.pulls_mode = "rate_limited"
    with pytest.raises(CallFailed) as limited:
        await client.call(
            "session.pull_request",
            {"title": "Other", "remoteBranch": "other"},
            session_id=session_id,
        )
    assert limited.value.code == "github_error" and "rate limit" in limited.value.message
    assert git_out("rev-parse", "refs/heads/other", cwd=repo.bare_path) == committed["commit"]

    # The token went to git and GitHub only: not on disk, in a remote, the log or a frame.
    sessions_dir = server.agent_dir.path / "sessions"
    found = subprocess.run(
        ["grep", "-r", "-l", "-a", TEST_TOKEN, str(sessions_dir)], capture_output=True, text=True
    )
    assert found.returncode == 1 and found.stdout == ""
    assert TEST_TOKEN not in git_out("config", "--list", "--show-origin", cwd=checkout)
    assert TEST_TOKEN not in git_out("remote", "-v", cwd=checkout)
    assert captured_log and not any(TEST_TOKEN in line for line in captured_log)
    assert TEST_TOKEN not in json.dumps(client.frames)


@pytest_twisted.ensureDeferred
async def test_a_push_that_hangs_times_out(make_pi_server, fake_github):
    server = make_pi_server(
        "--github-api-url", fake_github.api_url, environ={"GITHUB_TOKEN": TEST_TOKEN}
    )
    repo = fake_github.add_repo("octo/app")
    client = await server.client()
    created = await client.call("session.create", {"mode": "code", "repoId": "octo/app"})
    session_id = created["sessionId"]
    # The clone had the default timeout (a loaded machine needs it); the push a short one.
    server.extra_args += ["--clone-timeout", "3"]
    await server.restart()
    client = await server.client()
    await client.call("session.attach", {"sessionId": session_id})
    checkout = server.sessions.sessions[session_id].cwd
    (checkout / "change.txt").write_text("a change\n")
    await client.call("session.commit", {"message": "A change"}, session_id=session_id)

    fake_github.git_mode = "hang"
    with pytest.raises(CallFailed) as hung:
        await client.call("session.push", session_id=session_id)
    assert hung.value.code == "git_error" and "git push timed out after 3 s" in hung.value.message
    assert TEST_TOKEN not in hung.value.message
    progress = events(client, "session_progress", session_id)
    assert progress[-1]["payload"]["stage"] == "push"
    assert "octo/app" in progress[-1]["payload"]["message"]
    branch = f"pi/session-{session_id}"
    assert run_git("branch", "--list", branch, cwd=repo.bare_path) == ""
