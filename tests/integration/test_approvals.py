"""
Approvals (issue 23) through pi-server: the real pi agent with the server's extension
gating every tool call, the scripted LLM calling bash, write..., real WebSocket clients.
"""

import json
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.server import Site

from piserver.security.actionurls import ActionSigner, load_or_create_key
from tests.integration.test_notify import Receiver
from tests.support.fakegithub import make_repository
from tests.support.fakellm import Reply, Text, ToolCall
from tests.support.wsclient import CallFailed, is_type


def tool_messages(fake_llm) -> list[str]:
    """The text of every tool result the agent sent to the LLM, in order."""
    seen = []
    for request in fake_llm.requests:
        for message in request["messages"]:
            if message["role"] == "tool":
                content = message["content"]
                text = content if isinstance(content, str) else str(content)
                if text not in seen:
                    seen.append(text)
    return seen


async def code_session(server, client, tmp_path, **params) -> str:
    """A code session on a local repository (chat sessions have no bash)."""
    source = make_repository(str(tmp_path / "src"))
    (server.agent_dir.path / "repos.json").write_text(
        json.dumps({"repos": [{"id": "src", "name": "src", "path": source}]})
    )
    created = await client.call("session.create", {"mode": "code", "repoId": "src", **params})
    return created["sessionId"]


def after(seq, event_type, session_id):
    return lambda f: is_type(event_type, session_id)(f) and f["seq"] > seq


@pytest_twisted.ensureDeferred
async def test_ask_two_clients_deny_allow_allow_session_resume(pi_server, fake_llm, tmp_path):
    fake_llm.script(
        Reply(ToolCall("bash", {"command": "echo one"})),
        Reply(ToolCall("bash", {"command": "echo -n two"})),
        Reply(ToolCall("bash", {"command": "echo -n three"})),
        Reply(ToolCall("bash", {"command": "echo -n four"})),
        Reply(ToolCall("bash", {"command": "pwd"})),
        Text("done"),
    )
    phone = await pi_server.client()
    laptop = await pi_server.client()
    session_id = await code_session(pi_server, phone, tmp_path, permissionMode="ask")
    await laptop.call("session.attach", {"sessionId": session_id, "exclusive": False})
    (listed,) = (await phone.call("session.list"))["sessions"]
    assert listed["permissionMode"] == "ask"
    await phone.call("prompt", {"message": "work"}, session_id=session_id)

    # deny with a reason, answered by the second client: the first sees the withdrawal.
    first = await phone.wait_for_event(is_type("approval_request", session_id))
    await laptop.wait_for_event(is_type("approval_request", session_id))
    assert first["payload"]["toolName"] == "bash"
    assert first["payload"]["summary"] == "echo one"
    assert first["payload"]["input"] == {"command": "echo one"}
    await laptop.call(
        "approval.respond",
        {"approvalId": first["payload"]["approvalId"], "decision": "deny", "reason": "not now"},
    )
    resolved = await phone.wait_for_event(is_type("approval_resolved", session_id))
    assert resolved["payload"]["approvalId"] == first["payload"]["approvalId"]
    assert resolved["payload"]["decision"] == "deny"
    assert resolved["payload"]["reason"] == "not now"
    with pytest.raises(CallFailed) as late:
        await phone.call(
            "approval.respond",
            {"approvalId": first["payload"]["approvalId"], "decision": "allow"},
        )
    assert late.value.code == "not_found"

    # allow: the command runs.
    second = await phone.wait_for_event(after(resolved["seq"], "approval_request", session_id))
    assert second["payload"]["summary"] == "echo -n two"
    await phone.call(
        "approval.respond", {"approvalId": second["payload"]["approvalId"], "decision": "allow"}
    )
    # allow_session: echo runs for the rest of the session...
    third = await phone.wait_for_event(after(second["seq"], "approval_request", session_id))
    await phone.call(
        "approval.respond",
        {"approvalId": third["payload"]["approvalId"], "decision": "allow_session"},
    )
    # ... so the next echo is not asked for; pwd is.
    fourth = await phone.wait_for_event(after(third["seq"], "approval_request", session_id))
    assert fourth["payload"]["summary"] == "pwd"
    results = tool_messages(fake_llm)
    assert "not now" in results[0] and "denied" in results[0]
    assert results[1:4] == ["two", "three", "four"]

    # A client that reconnects (resume) while it waits gets it again.
    await phone.drop()
    again = await pi_server.client(hello=False)
    await again.call(
        "hello",
        {
            "client": {"name": "phone", "version": "1"},
            "resume": {"connectionId": "gone", "lastSeqBySession": {session_id: fourth["seq"]}},
        },
    )
    resent = await again.wait_for_event(is_type("approval_request", session_id))
    assert resent["payload"]["approvalId"] == fourth["payload"]["approvalId"]
    (listed,) = (await again.call("session.list"))["sessions"]
    assert listed["pendingApprovals"] == 1
    await again.call(
        "approval.respond", {"approvalId": resent["payload"]["approvalId"], "decision": "allow"}
    )
    await again.wait_for_event(is_type("agent_settled", session_id))
    assert len(tool_messages(fake_llm)) == 5
    approvals = [f for f in laptop.event_frames() if f["type"] == "approval_request"]
    assert len(approvals) == 4  # echo -n four ran without asking


def frames_of(client, event_type, session_id):
    return [f for f in client.event_frames() if is_type(event_type, session_id)(f)]


@pytest_twisted.ensureDeferred
async def test_edits_readonly_rules_restart_and_timeout(make_pi_server, fake_llm, tmp_path):
    server = make_pi_server()
    fake_llm.script(
        # edits: inside the checkout runs, ../x and bash ask.
        Reply(ToolCall("write", {"path": "inside.txt", "content": "hi"})),
        Reply(ToolCall("write", {"path": "../x", "content": "no"})),
        Reply(ToolCall("bash", {"command": "echo hi"})),
        Text("edits done"),
        # readonly: both refused without asking.
        Reply(ToolCall("write", {"path": "inside.txt", "content": "changed"})),
        Reply(ToolCall("bash", {"command": "echo ro"})),
        Text("readonly done"),
        # rules: allow echo, deny *secret* (deny wins), ls asks.
        Reply(ToolCall("bash", {"command": "echo ok"})),
        Reply(ToolCall("bash", {"command": "echo secret"})),
        Reply(ToolCall("bash", {"command": "ls inside.txt"})),
    )
    client = await server.client()
    session_id = await code_session(server, client, tmp_path, permissionMode="edits")
    (listed,) = (await client.call("session.list"))["sessions"]
    worktree = listed["worktreePath"]
    await client.call("prompt", {"message": "edit"}, session_id=session_id)
    outside = await client.wait_for_event(is_type("approval_request", session_id))
    assert outside["payload"]["toolName"] == "write"
    assert outside["payload"]["summary"] == "write ../x (2 bytes)"
    await client.call(
        "approval.respond", {"approvalId": outside["payload"]["approvalId"], "decision": "deny"}
    )
    bash = await client.wait_for_event(after(outside["seq"], "approval_request", session_id))
    assert bash["payload"]["summary"] == "echo hi"
    await client.call(
        "approval.respond", {"approvalId": bash["payload"]["approvalId"], "decision": "deny"}
    )
    settled = await client.wait_for_event(is_type("agent_settled", session_id))
    with open(f"{worktree}/inside.txt") as written:
        assert written.read() == "hi"
    assert not (tmp_path / "x").exists()

    await client.call("session.set_permission_mode", {"sessionId": session_id, "mode": "readonly"})
    await client.call("prompt", {"message": "look"}, session_id=session_id)
    settled = await client.wait_for_event(after(settled["seq"], "agent_settled", session_id))
    assert len(frames_of(client, "approval_request", session_id)) == 2
    refusals = [m for m in tool_messages(fake_llm) if "read-only" in m]
    assert len(refusals) == 2
    with open(f"{worktree}/inside.txt") as unchanged:
        assert unchanged.read() == "hi"

    rules = [
        {"tool": "bash", "pattern": "echo *", "action": "allow"},
        {"tool": "bash", "pattern": "*secret*", "action": "deny"},
    ]
    result = await client.call(
        "session.set_permission_mode", {"sessionId": session_id, "mode": "rules", "rules": rules}
    )
    assert result["permissionMode"] == "rules"
    assert (await client.call("get_state", session_id=session_id))["permissionMode"] == "rules"
    await client.call("prompt", {"message": "rules"}, session_id=session_id)
    pending = await client.wait_for_event(after(settled["seq"], "approval_request", session_id))
    assert pending["payload"]["summary"] == "ls inside.txt"
    assert "ok\n" in tool_messages(fake_llm)
    assert any("denies bash '*secret*'" in m for m in tool_messages(fake_llm))

    # The server restarts while ls waits (its agent goes with it); a short timeout now.
    fake_llm.script(
        Reply(ToolCall("bash", {"command": "ls inside.txt"})),
        Reply(ToolCall("bash", {"command": "pwd"})),
        Text("all done"),
    )
    server.extra_args += ["--approval-timeout", "2", "--agent-probe-interval", "0.5"]
    await server.restart()
    again = await server.client()
    await again.call("session.attach", {"sessionId": session_id, "lastSeq": pending["seq"]})
    offered = await again.wait_for_event(is_type("approval_request", session_id))
    assert offered["payload"]["approvalId"] == pending["payload"]["approvalId"]
    await again.call(
        "approval.respond", {"approvalId": offered["payload"]["approvalId"], "decision": "allow"}
    )
    # The answer reaches the new agent; the model makes the call again and it runs.
    timed = await again.wait_for_event(after(offered["seq"], "approval_request", session_id))
    assert timed["payload"]["summary"] == "pwd"
    assert "inside.txt\n" in tool_messages(fake_llm)
    resolved = await again.wait_for_event(
        lambda f: (
            is_type("approval_resolved", session_id)(f)
            and f["payload"]["approvalId"] == timed["payload"]["approvalId"]
        )
    )
    assert resolved["payload"]["by"] == "timeout"
    assert resolved["payload"]["decision"] == "deny"
    await again.wait_for_event(after(resolved["seq"], "agent_settled", session_id))
    assert any("no one answered" in m for m in tool_messages(fake_llm))
    assert not frames_of(again, "agent_hung", session_id)
    (listed,) = (await again.call("session.list"))["sessions"]
    assert (listed["permissionMode"], listed["pendingApprovals"]) == ("rules", 0)


@pytest_twisted.async_yield_fixture
async def receiver():
    resource = Receiver()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}/hook"
    yield resource
    await port.stopListening()


def local(server, url: str) -> str:
    """An action URL made for --public-url, sent to the server on loopback instead."""
    assert url.startswith(f"{PUBLIC_URL}/approval-action?t=")
    return f"http://127.0.0.1:{server.port}/approval-action?" + url.split("?", 1)[1]


async def post(url: str) -> int:
    response = await treq.post(url)
    await treq.content(response)
    return response.code


PUBLIC_URL = "https://phone.example/pi"


@pytest_twisted.ensureDeferred
async def test_action_urls_from_the_notification(
    make_pi_server, fake_llm, tmp_path, receiver, captured_log
):
    server = make_pi_server("--notify-url", receiver.url, "--public-url", PUBLIC_URL)
    data_dir = server.agent_dir.path
    assert server.service.config.sandbox == "bwrap"
    fake_llm.script(
        # The agent looks for the URLs and their key: its sandbox shows neither.
        Reply(
            ToolCall(
                "bash",
                {
                    "command": f"cat {data_dir}/approval-url.key || echo no-key; "
                    f"grep -rlE 'approval-actio[n][?]t=' {data_dir} || echo no-url"
                },
            )
        ),
        Reply(ToolCall("bash", {"command": "echo two"})),
        Text("done"),
    )
    client = await server.client()
    session_id = await code_session(server, client, tmp_path, permissionMode="ask")
    await client.call("prompt", {"message": "look"}, session_id=session_id)
    request = await client.wait_for_event(is_type("approval_request", session_id))
    notification, _body, _signature = await receiver.wait_for("input_needed")
    assert notification["approvalId"] == request["payload"]["approvalId"]
    assert "the agent asks to run bash" in notification["summary"]
    allow, deny = notification["actions"]
    assert (allow["action"], allow["label"], allow["method"]) == ("http", "Allow", "POST")
    assert deny["label"] == "Deny"

    assert await post(local(server, allow["url"])) == 200
    resolved = await client.wait_for_event(is_type("approval_resolved", session_id))
    assert resolved["payload"]["decision"] == "allow"
    assert resolved["payload"]["by"] == "action URL"
    # Used once: a second POST, and the other decision, change nothing.
    assert await post(local(server, allow["url"])) == 403
    assert await post(local(server, deny["url"])) == 403

    second = await client.wait_for_event(after(request["seq"], "approval_request", session_id))
    receiver.received.clear()
    notification, _body, _signature = await receiver.wait_for("input_needed")
    allow, deny = notification["actions"]
    token = allow["url"].split("t=", 1)[1]
    altered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    assert await post(local(server, allow["url"]).replace(token, altered)) == 403
    expired = ActionSigner(load_or_create_key(data_dir), reactor).sign(
        second["payload"]["approvalId"], "allow", time.time() - 1
    )
    assert await post(local(server, allow["url"]).replace(token, expired)) == 403
    assert await post(local(server, allow["url"]).replace("?t=", "?x=")) == 403
    assert await post(local(server, deny["url"])) == 200
    denied = await client.wait_for_event(after(second["seq"], "approval_resolved", session_id))
    assert denied["payload"]["decision"] == "deny"
    await client.wait_for_event(after(denied["seq"], "agent_settled", session_id))

    looked = tool_messages(fake_llm)[0]
    assert "no-key" in looked and "no-url" in looked
    assert "the person denied this bash call" in tool_messages(fake_llm)[1]
    log = "\n".join(captured_log)
    assert token not in log and "approval-action?t=" not in log
