"""
Sandboxed agents with the real pi and the real bubblewrap: what the agent's own bash
tool can and cannot reach, --sandbox auto's choice, and the command-template launcher.
"""

import json
import os
import stat

import pytest
import pytest_twisted
from twisted.python import usage

from tests.support.fakegithub import make_repository, run_git
from tests.support.fakellm import Reply, Text, ToolCall

SERVER_SECRET = "server-token-secret-0123456789"
DEVICE_SECRET = "device-token-secret-0123456789"
DOTENV_MARKER = "dotenv-file-marker"
OTHER_SESSION_SECRET = "other-session-secret"
SOURCE_MARKER = "source-worktree-marker"


def is_event(event_type, session_id):
    return lambda f: f["type"] == event_type and f["sessionId"] == session_id


def tool_results(request) -> dict[str, str]:
    """The tool results in an LLM request by their call's label (the first output line)."""
    results = {}
    for message in request["messages"]:
        if message["role"] == "tool":
            content = message["content"]
            text = content if isinstance(content, str) else json.dumps(content)
            results[text.split("\n", 1)[0].strip()] = text
    return results


def labelled(label: str, command: str) -> ToolCall:
    # The label first, then the command: the call's exit status is the command's.
    return ToolCall("bash", {"command": f"echo {label}; {command}"}, id=f"call-{label}")


def write_server_files(data_dir):
    (data_dir / "server-token").write_text(SERVER_SECRET + "\n")
    (data_dir / "device-tokens.json").write_text(json.dumps({"secret": DEVICE_SECRET}))
    (data_dir / ".env").write_text(f"# {DOTENV_MARKER}\nSANDBOX_TEST=1\n")


@pytest_twisted.ensureDeferred
async def test_the_sandboxed_agent_reaches_its_checkout_and_nothing_of_the_server(
    make_pi_server, agent_dir, fake_llm, tmp_path
):
    data_dir = agent_dir.path
    write_server_files(data_dir)
    source = make_repository(
        str(tmp_path / "source"),
        default_branch="trunk",
        files={"README.md": f"# {SOURCE_MARKER}\n"},
    )
    (data_dir / "repos.json").write_text(
        json.dumps({"repos": [{"id": "src", "name": "Source", "path": source}]})
    )
    server = make_pi_server()
    assert server.service.config.sandbox == "bwrap"  # --sandbox auto picked it here
    client = await server.client()

    chat = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    other = server.sessions.sessions[chat]
    # The bundled extension, compiled at the agent's first start, is kept for its next.
    assert os.listdir(other.directory / "cache" / "jiti")
    (other.cwd / "secret.txt").write_text(OTHER_SESSION_SECRET)
    neighbour = await client.call("session.create", {"mode": "code", "repoId": "src"})
    neighbour_checkout = server.sessions.sessions[neighbour["sessionId"]].cwd
    (neighbour_checkout / "draft.txt").write_text(OTHER_SESSION_SECRET)
    session_id = (await client.call("session.create", {"mode": "code", "repoId": "src"}))[
        "sessionId"
    ]
    checkout = server.sessions.sessions[session_id].cwd

    refused = {
        "server-token": f"cat {data_dir}/server-token",
        "device-tokens": f"cat {data_dir}/device-tokens.json",
        "dotenv": f"cat {data_dir}/.env",
        "state": f"cat {data_dir}/state.json",
        "other-session": f"cat {other.cwd}/secret.txt",
        "other-worktree": f"cat {neighbour_checkout}/draft.txt",
        "source-worktree": f"cat {source}/README.md",
        "root-home": "ls -A /root",
    }
    commit = (
        "echo made > made.txt && sed -i s/marker/edited/ README.md && git add -A"
        " && git -c user.name=pi -c user.email=pi@x commit -qm 'agent commit'"
        " && git log --format=%s -1"
    )
    fake_llm.script(
        Reply(
            *(labelled(label, command) for label, command in refused.items()),
            labelled("source-git", f"ls -A {source}/.git"),
            labelled("commit", commit),
            labelled("source-objects", f"touch {source}/.git/objects/planted"),
        ),
        Text("looked around"),
        Text("still here"),
    )
    await client.call("prompt", {"message": "look around"}, session_id=session_id)
    await client.wait_for_event(is_event("agent_settled", session_id))

    results = tool_results(fake_llm.requests[1])
    for label in refused:
        assert "No such file or directory" in results[label], results[label]
    everything = json.dumps(fake_llm.requests[1])
    for secret in (SERVER_SECRET, DEVICE_SECRET, DOTENV_MARKER, OTHER_SESSION_SECRET):
        assert secret not in everything
    # Of the source repository's git dir only its objects are shown, read-only (the
    # clone's alternate).
    assert results["source-git"].split("\n")[1:3] == ["objects", ""]
    assert "agent commit" in results["commit"], results["commit"]
    assert "Read-only file system" in results["source-objects"]
    # Each refusal was an ordinary failed tool call; the commit worked.
    ends = {
        f["payload"]["toolCallId"]: f["payload"]["isError"]
        for f in client.event_frames(session_id)
        if f["type"] == "tool_execution_end"
    }
    failed = {
        label
        for label in [*refused, "source-git", "commit", "source-objects"]
        if ends[f"call-{label}"]
    }
    assert failed == {*refused, "source-objects"}

    branch = f"pi/session-{session_id}"
    # The agent's commit is its clone's; the source's branch moves only by the server.
    assert run_git("log", "--format=%s", "-1", branch, cwd=str(checkout)).strip() == "agent commit"
    assert run_git("rev-parse", branch, cwd=source) == run_git("rev-parse", "trunk", cwd=source)
    assert (checkout / "README.md").read_text() == "# source-worktree-edited\n"
    assert run_git("status", "--porcelain", cwd=str(checkout)) == ""

    # The server's commit: its staging and the update of the agent's index run in the
    # session's sandbox; the index learns the commit (nothing left staged or changed),
    # and the branch reaches the source repository.
    (checkout / "server.txt").write_text("committed by the server\n")
    committed = await client.call("session.commit", {"message": "server"}, session_id=session_id)
    assert run_git("status", "--porcelain", cwd=str(checkout)) == ""
    assert run_git("rev-parse", branch, cwd=source).strip() == committed["commit"]

    await client.call("prompt", {"message": "and now?"}, session_id=session_id)
    settled = await client.wait_for_event(
        lambda f: is_event("agent_settled", session_id)(f) and len(fake_llm.requests) == 3
    )
    assert settled


def failing_bwrap(tmp_path) -> str:
    stand_in = tmp_path / "bin" / "bwrap"
    stand_in.parent.mkdir()
    stand_in.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"
    )
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    return str(stand_in)


@pytest_twisted.ensureDeferred
async def test_auto_runs_agents_unsandboxed_with_a_warning_when_bwrap_fails(
    make_pi_server, fake_llm, tmp_path, captured_log
):
    server = make_pi_server("--bwrap", failing_bwrap(tmp_path))
    config = server.service.config
    assert config.sandbox == "none"
    assert "No permissions to create new namespace" in config.sandbox_problem
    assert any("AGENTS ARE NOT SANDBOXED" in line and "namespace" in line for line in captured_log)
    client = await server.client()
    session_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    fake_llm.script(Text("unsandboxed but working"))
    await client.call("prompt", {"message": "hi"}, session_id=session_id)
    await client.wait_for_event(is_event("agent_settled", session_id))
    assert len(fake_llm.requests) == 1


def test_an_explicit_bwrap_that_fails_stops_the_start(make_pi_server, tmp_path):
    with pytest.raises(usage.UsageError, match="--sandbox bwrap: .*No permissions"):
        make_pi_server("--sandbox", "bwrap", "--bwrap", failing_bwrap(tmp_path))


WRAPPER = """#!/bin/sh
# Stands in for `docker run -i` or `kubectl exec -i`: notes its placeholders, runs the rest.
printf '%s\\n' "$2" "$4" "$6" "$(pwd)" >> "{record}"
shift 6
exec "$@"
"""


@pytest_twisted.ensureDeferred
async def test_the_command_template_launcher_runs_agents_through_a_wrapper(
    make_pi_server, fake_llm, tmp_path
):
    record = tmp_path / "wrapped"
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(WRAPPER.replace("{record}", str(record)))
    wrapper.chmod(0o755)
    server = make_pi_server(
        "--launcher-command", f"{wrapper} --cwd {{cwd}} --session {{session}} --uid {{uid}}"
    )
    assert server.service.config.sandbox == "command"
    client = await server.client()
    session_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    cwd = str(server.sessions.sessions[session_id].cwd)
    lines = record.read_text().splitlines()
    launches = [lines[n : n + 4] for n in range(0, len(lines), 4)]  # warm agents' too
    assert [cwd, session_id, str(os.getuid()), cwd] in launches
    fake_llm.script(Text("wrapped and working"))
    await client.call("prompt", {"message": "hi"}, session_id=session_id)
    await client.wait_for_event(is_event("agent_settled", session_id))
    assert len(fake_llm.requests) == 1


def test_a_template_with_an_unknown_placeholder_stops_the_start(make_pi_server, tmp_path):
    with pytest.raises(usage.UsageError, match=r"unknown placeholder \{home\}"):
        make_pi_server("--launcher-command", "sh -c {home}")
