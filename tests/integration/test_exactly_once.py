"""
Exactly once over a flaky link (issue 24): a request whose connection is cut right after
its frame was written is sent again after a resume and never runs twice; its key is
still known after a kill -9. Real pi, the scripted LLM, the GitHub stand-in, pi-server
as a process of its own, raw sockets.
"""

import json
import shutil
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.fakegithub import TEST_TOKEN, run_git
from tests.support.fakellm import Reply, Text, Tokens, ToolCall
from tests.support.piagent import repository_root
from tests.support.processes import eventually
from tests.support.server import session_directories
from tests.support.serverprocess import RawRpc, ServerProcess
from tests.support.wsclient import RpcClient, is_type

DIALOGS_EXTENSION = repository_root() / "tests" / "support" / "extensions" / "dialogs.ts"
TOKEN = "exactly-once-token"
HELLO = {"client": {"name": "tests", "version": "1"}}


@pytest.fixture
def server_process(agent_dir, pi_binary, tmp_path, fake_github):
    # A pi extension whose /dialog command opens a dialog and reports the answer it got.
    (agent_dir.path / "extensions").mkdir(exist_ok=True)
    shutil.copy(DIALOGS_EXTENSION, agent_dir.path / "extensions" / "dialogs.ts")
    server = ServerProcess.with_real_pi(
        tmp_path,
        agent_dir,
        pi_binary,
        "--auth-token",
        TOKEN,
        "--github-api-url",
        fake_github.api_url,
        environ={"GITHUB_TOKEN": TEST_TOKEN},
    )
    yield server
    server.stop()
    server.kill_agents()


def send_and_cut(server, method, params, session_id=None) -> tuple[str, str]:
    """Say hello on a raw socket, write one request frame and close the socket at once,
    before any answer; (the request id, the cut connection's id)."""
    raw = RawRpc(server.port, TOKEN)
    hello = raw.call("hello", HELLO)
    request_id = str(uuid.uuid4()).upper()
    raw.send(method, params, session_id, request_id=request_id)
    raw.close()
    return request_id, hello["connectionId"]


async def resume(server, previous_connection_id) -> RpcClient:
    client = await RpcClient.connect(reactor, server.port, token=TOKEN)
    await client.call("hello", {**HELLO, "resume": {"connectionId": previous_connection_id}})
    return client


async def resend(client, method, params, session_id, request_id) -> dict:
    frame = await client.request(method, params, session_id, request_id=request_id)
    assert frame["ok"] is True, frame
    assert frame["repeat"] is True, frame
    return frame["result"]


def user_messages(messages):
    return [m for m in messages if m["role"] == "user"]


def text_of(message) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


@pytest_twisted.ensureDeferred
async def test_requests_cut_before_their_answer_run_once(server_process, fake_llm, fake_github):
    repo = fake_github.add_repo("octo/app", files={"README.md": "# app\n"})
    server = server_process.start()
    client = await RpcClient.connect(reactor, server.port, token=TOKEN)
    await client.call("hello", HELLO)

    # session.create, cut: one session directory.
    params = {"mode": "code", "repoId": "octo/app"}
    request_id, cut = send_and_cut(server, "session.create", params)
    create_key = request_id
    sessions_dir = server.data_dir / "sessions"
    await eventually(
        lambda: sessions_dir.exists() and session_directories(server.data_dir),
        "the session directory",
    )
    again = await resume(server, cut)
    session_id = (await resend(again, "session.create", params, None, request_id))["sessionId"]
    assert [d.name for d in session_directories(server.data_dir)] == [session_id]
    (listed,) = (await again.call("session.list"))["sessions"]
    checkout = listed["worktreePath"]

    # prompt, cut: the LLM got one request, the session holds one user message, and an
    # idle prompt was "started".
    fake_llm.script(
        Reply(ToolCall("write", {"path": "notes.txt", "content": "once\n"})), Text("written")
    )
    prompt = {"message": "write the notes"}
    request_id, cut = send_and_cut(server, "prompt", prompt, session_id)
    await fake_llm.wait_for_request(1)
    again = await resume(server, cut)
    await again.call("session.attach", {"sessionId": session_id, "lastSeq": 0})
    assert await resend(again, "prompt", prompt, session_id, request_id) == {
        "disposition": "started"
    }
    await again.wait_for_event(is_type("agent_settled", session_id))
    assert len(fake_llm.requests) == 2  # the tool call and the answer after it: one run
    messages = (await again.call("get_messages", session_id=session_id))["messages"]
    assert [text_of(m) for m in user_messages(messages)] == ["write the notes"]
    prompt_key = request_id

    # The same key with other params is refused.
    conflict = await again.request(
        "prompt", {"message": "other"}, session_id, request_id=request_id
    )
    assert conflict["ok"] is False and conflict["error"]["code"] == "idempotency_conflict"

    # session.commit, cut: one commit.
    base = run_git("rev-parse", "HEAD", cwd=checkout).strip()
    commit = {"message": "Notes"}
    request_id, cut = send_and_cut(server, "session.commit", commit, session_id)
    await eventually(
        lambda: run_git("rev-parse", "HEAD", cwd=checkout).strip() != base, "the commit"
    )
    again = await resume(server, cut)
    committed = await resend(again, "session.commit", commit, session_id, request_id)
    assert run_git("rev-list", "--count", f"{base}..HEAD", cwd=checkout).strip() == "1"
    assert run_git("rev-parse", "HEAD", cwd=checkout).strip() == committed["commit"]
    await again.call("session.push", session_id=session_id)

    # session.pull_request, cut: one pull request at the stand-in.
    pull = {"title": "Notes"}
    request_id, cut = send_and_cut(server, "session.pull_request", pull, session_id)
    await eventually(lambda: fake_github.pull_requests, "the pull request")
    again = await resume(server, cut)
    opened = await resend(again, "session.pull_request", pull, session_id, request_id)
    assert opened["number"] == 1 and len(fake_github.pull_requests) == 1
    assert fake_github.pull_requests[0].full_name == repo.full_name

    # A dialog answer, cut: the extension gets it once; an extension command is "handled".
    watcher = again
    await watcher.call("session.attach", {"sessionId": session_id})
    command = watcher.request("prompt", {"message": "/dialog select"}, session_id)
    asked = await watcher.wait_for_event(
        lambda f: f["type"] == "extension_ui_request" and f["payload"]["method"] == "select"
    )
    answer = {"id": asked["payload"]["id"], "value": "green"}
    request_id, cut = send_and_cut(server, "extension_ui_response", answer, session_id)
    assert (await command)["result"] == {"disposition": "handled"}
    await watcher.wait_for_event(
        lambda f: f["type"] == "extension_ui_request" and f["payload"]["method"] == "notify"
    )
    again = await resume(server, cut)
    assert await resend(again, "extension_ui_response", answer, session_id, request_id) == {}
    # pi got the answer once: one notice (pi's answer to get_state comes after anything pi
    # sent before it).
    await watcher.call("get_state", session_id=session_id)
    notices = [
        f["payload"]["message"]
        for f in watcher.event_frames(session_id)
        if f["type"] == "extension_ui_request" and f["payload"]["method"] == "notify"
    ]
    assert notices == ['dialog select answered "green"']

    # An approval answer, cut: the call is decided once and runs once.
    await watcher.call("session.set_permission_mode", {"sessionId": session_id, "mode": "ask"})
    fake_llm.script(Reply(ToolCall("bash", {"command": "echo -n ran >> once.txt"})), Text("ok"))
    await watcher.call("prompt", {"message": "append"}, session_id=session_id)
    asked = await watcher.wait_for_event(is_type("approval_request", session_id))
    answer = {"approvalId": asked["payload"]["approvalId"], "decision": "allow"}
    request_id, cut = send_and_cut(server, "approval.respond", answer, session_id)
    await watcher.wait_for_event(is_type("agent_settled", session_id))
    again = await resume(server, cut)
    assert await resend(again, "approval.respond", answer, session_id, request_id) == {}
    resolutions = [f for f in watcher.event_frames(session_id) if f["type"] == "approval_resolved"]
    assert [f["payload"]["decision"] for f in resolutions] == ["allow"]
    assert (Path(checkout) / "once.txt").read_text() == "ran"
    await watcher.call("session.set_permission_mode", {"sessionId": session_id, "mode": "full"})

    # A prompt during a run, with streamingBehavior, is queued.
    again = watcher
    fake_llm.script(Tokens(300, delay=0.01), Text("then this"))
    await again.call("prompt", {"message": "a long one"}, session_id=session_id)
    await again.wait_for_event(
        lambda f: f["type"] == "message_update" and f["sessionId"] == session_id
    )
    queued = await again.call(
        "prompt", {"message": "and then", "streamingBehavior": "followUp"}, session_id=session_id
    )
    assert queued == {"disposition": "queued"}

    # kill -9: the keys are still known after the restart.
    server.kill()
    server.kill_agents()
    server.start()
    after = await RpcClient.connect(reactor, server.port, token=TOKEN)
    await after.call("hello", HELLO)
    assert await resend(after, "prompt", prompt, session_id, prompt_key) == {
        "disposition": "started"
    }
    created = await resend(after, "session.create", params, None, create_key)
    assert created == {"sessionId": session_id}
    assert [d.name for d in session_directories(server.data_dir)] == [session_id]
    key_log = (server.data_dir / "idempotency-keys.log").read_text()
    assert TOKEN not in key_log and TEST_TOKEN not in key_log
    assert all(json.loads(line) for line in key_log.splitlines())
