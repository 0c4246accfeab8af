"""
Approvals (issue 23) through pi-server: the real pi agent with the server's extension
gating every tool call, the scripted LLM calling bash, write..., real WebSocket clients.
"""

import json

import pytest
import pytest_twisted

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
