"""
Native tools and extension dialogs through pi-server: the real pi agent, the
project's pi extension, the scripted LLM calling the tool, real WebSocket clients.
"""

import json
import shutil
from pathlib import Path

import pytest
import pytest_twisted

from tests.support.fakegithub import make_repository
from tests.support.fakellm import Hang, Reply, Text, ToolCall
from tests.support.wsclient import CallFailed, is_type

HELLO = {"client": {"name": "phone", "version": "1"}}
LOCATION = {
    "name": "get_location",
    "description": "The device's current location",
    "parameters": {"type": "object", "properties": {"precise": {"type": "boolean"}}},
}
DIALOGS_EXTENSION = Path(__file__).parent.parent / "support" / "extensions" / "dialogs.ts"


def tool_message(request):
    """The latest tool result message the agent sent back to the LLM."""
    return [m for m in request["messages"] if m["role"] == "tool"][-1]


async def phone(server, **hello):
    return await server.client(nativeTools=[LOCATION], **hello)


async def new_chat(client):
    return (await client.call("session.create", {"mode": "chat"}))["sessionId"]


@pytest.fixture
def quick_timeout_server(make_pi_server):
    return make_pi_server("--native-tool-timeout", "1")


@pytest_twisted.ensureDeferred
async def test_tool_offered_called_and_answered(pi_server, fake_llm):
    fake_llm.script(
        Reply(ToolCall("get_location", {"precise": True})),
        Text("You are home."),
        Reply(ToolCall("get_location", {})),
        Text("Could not tell."),
    )
    client = await phone(pi_server)
    session_id = await new_chat(client)
    await client.call("prompt", {"message": "where am I?"}, session_id=session_id)

    request = await client.wait_for_event(is_type("native_tool_request", session_id))
    payload = request["payload"]
    assert payload["toolName"] == "get_location" and payload["args"] == {"precise": True}
    offered = {t["function"]["name"]: t["function"] for t in fake_llm.requests[0]["tools"]}
    assert offered["get_location"]["description"] == LOCATION["description"]
    assert (
        offered["get_location"]["parameters"]["properties"] == LOCATION["parameters"]["properties"]
    )

    assert (
        await client.call(
            "native_tool_response",
            {"callId": payload["callId"], "result": {"lat": 52.5, "lon": 13.4}},
            session_id=session_id,
        )
        == {}
    )
    await client.wait_for_event(is_type("agent_settled", session_id))
    assert json.loads(tool_message(fake_llm.requests[1])["content"]) == {"lat": 52.5, "lon": 13.4}
    # Answering twice: the call is no longer pending.
    with pytest.raises(CallFailed) as twice:
        await client.call("native_tool_response", {"callId": payload["callId"], "result": 1})
    assert twice.value.code == "not_found"

    await client.call("prompt", {"message": "and now?"}, session_id=session_id)
    second = await client.wait_for_event(
        lambda f: f["type"] == "native_tool_request" and f["payload"]["callId"] != payload["callId"]
    )
    await client.call(
        "native_tool_response",
        {"callId": second["payload"]["callId"], "error": {"message": "location services off"}},
    )
    await client.wait_for_event(lambda f: f["type"] == "agent_settled" and f["seq"] > second["seq"])
    assert "location services off" in tool_message(fake_llm.requests[3])["content"]


@pytest_twisted.ensureDeferred
async def test_abort_while_a_call_is_pending(pi_server, fake_llm):
    fake_llm.script(Reply(ToolCall("get_location", {})), Text("after"), Text("still working"))
    client = await phone(pi_server)
    session_id = await new_chat(client)
    await client.call("prompt", {"message": "where?"}, session_id=session_id)
    request = await client.wait_for_event(is_type("native_tool_request", session_id))
    await client.call("abort", session_id=session_id)
    cancel = await client.wait_for_event(is_type("native_tool_cancel", session_id))
    assert cancel["payload"]["callId"] == request["payload"]["callId"]
    await client.wait_for_event(is_type("agent_settled", session_id))

    await client.call("prompt", {"message": "hello again"}, session_id=session_id)
    await client.wait_for_event(lambda f: f["type"] == "agent_settled" and f["seq"] > cancel["seq"])
    texts = json.dumps((await client.call("get_messages", session_id=session_id))["messages"])
    assert "hello again" in texts


@pytest_twisted.ensureDeferred
async def test_a_device_that_drops_gets_the_call_again(pi_server, fake_llm):
    fake_llm.script(Reply(ToolCall("get_location", {})), Text("thanks"))
    client = await phone(pi_server)
    session_id = await new_chat(client)
    await client.call("prompt", {"message": "where?"}, session_id=session_id)
    first = await client.wait_for_event(is_type("native_tool_request", session_id))
    await client.drop()

    again = await pi_server.client(hello=False)
    await again.call(
        "hello",
        {
            **HELLO,
            "nativeTools": [LOCATION],
            "resume": {"connectionId": "x", "lastSeqBySession": {session_id: first["seq"]}},
        },
    )
    resent = await again.wait_for_event(is_type("native_tool_request", session_id))
    call_id = resent["payload"]["callId"]
    assert call_id == first["payload"]["callId"]
    await again.call("native_tool_response", {"callId": call_id, "result": "Berlin"})
    await again.wait_for_event(is_type("agent_settled", session_id))
    assert tool_message(fake_llm.requests[1])["content"] == "Berlin"
    assert len(fake_llm.requests) == 2  # answered once


@pytest_twisted.ensureDeferred
async def test_two_devices_first_answer_wins(pi_server, fake_llm):
    fake_llm.script(Reply(ToolCall("get_location", {})), Text("ok"))
    first = await phone(pi_server)
    second = await phone(pi_server)
    watcher = await pi_server.client()  # declares no tools
    session_id = await new_chat(first)
    for client in (second, watcher):
        await client.call("session.attach", {"sessionId": session_id, "exclusive": False})
    await first.call("prompt", {"message": "where?"}, session_id=session_id)
    request = await first.wait_for_event(is_type("native_tool_request", session_id))
    await second.wait_for_event(is_type("native_tool_request", session_id))
    call_id = request["payload"]["callId"]
    await second.call("native_tool_response", {"callId": call_id, "result": "Paris"})
    resolved = await first.wait_for_event(is_type("native_tool_resolved", session_id))
    assert resolved["payload"]["callId"] == call_id
    with pytest.raises(CallFailed) as late:
        await first.call("native_tool_response", {"callId": call_id, "result": "Rome"})
    assert late.value.code == "not_found"
    await watcher.wait_for_event(is_type("agent_settled", session_id))
    assert not any(f["type"] == "native_tool_request" for f in watcher.event_frames())
    assert tool_message(fake_llm.requests[1])["content"] == "Paris"


@pytest_twisted.ensureDeferred
async def test_no_device_answers_in_time(quick_timeout_server, fake_llm):
    server = quick_timeout_server
    fake_llm.script(Reply(ToolCall("get_location", {})), Text("I could not find out."))
    client = await phone(server)
    session_id = await new_chat(client)
    await client.call("session.detach")
    await client.call("prompt", {"message": "where?"}, session_id=session_id)
    await fake_llm.wait_for_end(2)
    await client.call("session.attach", {"sessionId": session_id, "lastSeq": 0})
    await client.wait_for_event(is_type("agent_settled", session_id))
    types = [f["type"] for f in client.event_frames(session_id)]
    assert "native_tool_cancel" in types
    assert (
        "no connected device answered get_location" in tool_message(fake_llm.requests[1])["content"]
    )


@pytest_twisted.ensureDeferred
async def test_extension_confirm_dialog_round_trip(pi_server, fake_llm):
    extensions = pi_server.agent_dir.path / "extensions"
    extensions.mkdir()
    shutil.copy(DIALOGS_EXTENSION, extensions / "dialogs.ts")
    fake_llm.script(Reply(ToolCall("confirm_action", {"question": "Delete it?"})), Text("done"))
    first = await pi_server.client()
    second = await pi_server.client()
    session_id = await new_chat(first)
    await second.call("session.attach", {"sessionId": session_id, "exclusive": False})
    await first.call("prompt", {"message": "delete it"}, session_id=session_id)
    dialog = await first.wait_for_event(
        lambda f: f["type"] == "extension_ui_request" and f["payload"]["method"] == "confirm"
    )
    await second.wait_for_event(is_type("extension_ui_request", session_id))
    assert dialog["payload"]["message"] == "Delete it?"
    await first.call(
        "extension_ui_response",
        {"id": dialog["payload"]["id"], "confirmed": True},
        session_id=session_id,
    )
    resolved = await second.wait_for_event(is_type("extension_ui_resolved", session_id))
    assert resolved["payload"]["id"] == dialog["payload"]["id"]
    await first.wait_for_event(is_type("agent_settled", session_id))
    assert tool_message(fake_llm.requests[1])["content"] == "confirmed"
    with pytest.raises(CallFailed) as answered:
        await second.call(
            "extension_ui_response", {"id": dialog["payload"]["id"], "confirmed": False}
        )
    assert answered.value.code == "not_found"


@pytest_twisted.ensureDeferred
async def test_native_tools_only_where_offered(pi_server, fake_llm, tmp_path):
    source = make_repository(str(tmp_path / "src"))
    (pi_server.agent_dir.path / "repos.json").write_text(
        json.dumps({"repos": [{"id": "src", "name": "src", "path": source}]})
    )
    fake_llm.script(Text("one"), Text("two"), Reply(Text("three"), Hang()))
    client = await phone(pi_server)
    plain = (await client.call("session.create", {"mode": "code", "repoId": "src"}))["sessionId"]
    await client.call("prompt", {"message": "tools?"}, session_id=plain)
    await client.wait_for_event(is_type("agent_settled", plain))
    with_tools = (
        await client.call(
            "session.create", {"mode": "code", "repoId": "src", "includeNativeTools": True}
        )
    )["sessionId"]
    await client.call("prompt", {"message": "tools?"}, session_id=with_tools)
    await client.wait_for_event(is_type("agent_settled", with_tools))
    names = [{t["function"]["name"] for t in r["tools"]} for r in fake_llm.requests]
    assert "get_location" not in names[0] and "bash" in names[0]
    assert {"get_location", "bash"} <= names[1]


@pytest.mark.parametrize(
    "tools, fragment",
    [
        ([{"name": "bad name", "description": "x", "parameters": {"type": "object"}}], "bad name"),
        ([{"name": "read", "description": "x", "parameters": {"type": "object"}}], "read"),
        ([{"name": "ok", "description": "x", "parameters": "nope"}], "ok"),
        ("not a list", "nativeTools"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_invalid_declarations_are_refused(pi_server, tools, fragment):
    client = await pi_server.client(hello=False)
    with pytest.raises(CallFailed) as refused:
        await client.call("hello", {**HELLO, "nativeTools": tools})
    assert refused.value.code == "invalid_params" and fragment in refused.value.message


@pytest_twisted.ensureDeferred
async def test_a_new_declaration_applies_before_the_next_run(pi_server, fake_llm):
    fake_llm.script(Text("first"), Text("second"))
    client = await phone(pi_server)
    session_id = await new_chat(client)
    await client.call("prompt", {"message": "one"}, session_id=session_id)
    first_end = await client.wait_for_event(is_type("agent_settled", session_id))
    photos = {"name": "pick_photo", "description": "Pick a photo", "parameters": {"type": "object"}}
    await client.call("hello", {**HELLO, "nativeTools": [LOCATION, photos]})
    await client.call("prompt", {"message": "two"}, session_id=session_id)
    await fake_llm.wait_for_request(2)
    names = {t["function"]["name"] for t in fake_llm.requests[1]["tools"]}
    assert {"get_location", "pick_photo"} <= names
    await client.wait_for_event(
        lambda f: f["type"] == "agent_settled" and f["seq"] > first_end["seq"]
    )
