"""The native tools extension (piserver/agents/extensions/session.ts) and extension dialogs,
in the real pi agent against the scripted LLM, driven with piserver.agents.nativetools."""

import json

import pytest_twisted
from twisted.internet import task

from piserver.agents import nativetools
from piserver.agents.nativetools import NativeTool, PendingCalls
from tests.support.fakellm import Reply, Text, ToolCall
from tests.support.piagent import repository_root

DIALOGS_EXTENSION = repository_root() / "tests" / "support" / "extensions" / "dialogs.ts"
LOCATION_SCHEMA = {
    "type": "object",
    "properties": {"accuracy": {"type": "string", "enum": ["coarse", "fine"]}},
    "required": ["accuracy"],
}
GET_LOCATION = NativeTool(
    name="get_location", description="Where the phone is now.", parameters=LOCATION_SCHEMA
)
GET_BATTERY = NativeTool(
    name="get_battery",
    description="The phone's battery level in percent.",
    parameters={"type": "object", "properties": {}},
)


def start_pi(spawn_pi_rpc, tools_file, tools, *more_args):
    nativetools.write_tools_file(tools_file, tools)
    args = nativetools.extension_args(tools_file.parent / "system-prompt.md", tools_file)
    return spawn_pi_rpc("--no-session", *args, *more_args)


def offered_tools(request: dict) -> dict:
    """The tools of an LLM request body, by name."""
    return {tool["function"]["name"]: tool["function"] for tool in request.get("tools", [])}


def answer(pi, response: dict) -> None:
    pi.write_line(json.dumps(response))


@pytest_twisted.inlineCallbacks
def test_the_llm_sees_the_declared_tool(spawn_pi_rpc, fake_llm, tmp_path):
    fake_llm.script(Text("Noted."))
    pi = start_pi(spawn_pi_rpc, tmp_path / "tools.json", [GET_LOCATION])

    yield pi.send({"type": "prompt", "message": "where am I?"})
    yield pi.wait_for_event("agent_settled")

    tools = offered_tools(fake_llm.requests[0])
    assert tools["get_location"]["description"] == "Where the phone is now."
    assert tools["get_location"]["parameters"] == LOCATION_SCHEMA
    assert {"read", "bash", "edit", "write"} <= set(tools)


@pytest_twisted.inlineCallbacks
def test_a_call_is_asked_over_the_ui_channel_and_the_result_reaches_the_llm(
    spawn_pi_rpc, fake_llm, tmp_path
):
    fake_llm.script(
        Reply(ToolCall("get_location", {"accuracy": "fine"})), Text("You are in Paris.")
    )
    pi = start_pi(spawn_pi_rpc, tmp_path / "tools.json", [GET_LOCATION])

    yield pi.send({"type": "prompt", "message": "where am I?"})
    request = yield pi.wait_for_event("extension_ui_request")
    call = nativetools.parse_tool_call(request)
    answer(pi, nativetools.tool_result_response(call, result={"lat": 48.86, "lon": 2.35}))
    yield pi.wait_for_event("agent_settled")

    assert (request["method"], request["title"]) == ("input", nativetools.CALL_TITLE)
    assert "timeout" not in request
    assert call.call_id == request["id"]
    assert (call.tool_call_id, call.tool_name) == ("call_1_0", "get_location")
    assert call.args == {"accuracy": "fine"}
    (tool_end,) = pi.events_of("tool_execution_end")
    assert tool_end["isError"] is False
    assert fake_llm.requests[1]["messages"][-1] == {
        "role": "tool",
        "content": '{"lat":48.86,"lon":2.35}',
        "tool_call_id": "call_1_0",
    }
    assert pi.events_of("agent_end")[0]["messages"][-1]["content"][0]["text"] == (
        "You are in Paris."
    )


@pytest_twisted.inlineCallbacks
def test_a_string_result_is_passed_as_it_is(spawn_pi_rpc, fake_llm, tmp_path):
    fake_llm.script(Reply(ToolCall("get_battery", {})), Text("Charged."))
    pi = start_pi(spawn_pi_rpc, tmp_path / "tools.json", [GET_BATTERY])

    yield pi.send({"type": "prompt", "message": "battery?"})
    request = yield pi.wait_for_event("extension_ui_request")
    answer(pi, nativetools.tool_result_response(nativetools.parse_tool_call(request), "87 %"))
    yield pi.wait_for_event("agent_settled")

    assert fake_llm.requests[1]["messages"][-1]["content"] == "87 %"


@pytest_twisted.inlineCallbacks
def test_an_error_answer_becomes_an_error_result(spawn_pi_rpc, fake_llm, tmp_path):
    fake_llm.script(Reply(ToolCall("get_location", {"accuracy": "coarse"})), Text("Sorry."))
    pi = start_pi(spawn_pi_rpc, tmp_path / "tools.json", [GET_LOCATION])

    yield pi.send({"type": "prompt", "message": "where am I?"})
    request = yield pi.wait_for_event("extension_ui_request")
    call = nativetools.parse_tool_call(request)
    answer(pi, nativetools.tool_result_response(call, error="location permission denied"))
    yield pi.wait_for_event("agent_settled")

    (tool_end,) = pi.events_of("tool_execution_end")
    assert tool_end["isError"] is True
    assert tool_end["result"]["content"] == [{"type": "text", "text": "location permission denied"}]
    tool_message = fake_llm.requests[1]["messages"][-1]
    assert tool_message["tool_call_id"] == "call_1_0"
    assert "location permission denied" in json.dumps(tool_message["content"])


@pytest_twisted.inlineCallbacks
def test_a_cancelled_answer_fails_the_tool(spawn_pi_rpc, fake_llm, tmp_path):
    fake_llm.script(Reply(ToolCall("get_location", {"accuracy": "coarse"})), Text("Hm."))
    pi = start_pi(spawn_pi_rpc, tmp_path / "tools.json", [GET_LOCATION])

    yield pi.send({"type": "prompt", "message": "where am I?"})
    request = yield pi.wait_for_event("extension_ui_request")
    answer(pi, nativetools.cancelled_response(nativetools.parse_tool_call(request)))
    yield pi.wait_for_event("agent_settled")

    (tool_end,) = pi.events_of("tool_execution_end")
    assert tool_end["isError"] is True
    assert tool_end["result"]["content"][0]["text"] == "get_location was cancelled"


@pytest_twisted.inlineCallbacks
def test_abort_ends_the_run_and_the_pending_call_is_recognised_as_cancelled(
    spawn_pi_rpc, fake_llm, tmp_path
):
    fake_llm.script(Reply(ToolCall("get_location", {"accuracy": "fine"})), Text("Still here."))
    pi = start_pi(spawn_pi_rpc, tmp_path / "tools.json", [GET_LOCATION])
    pending = PendingCalls(task.Clock())
    timed_out = []

    yield pi.send({"type": "prompt", "message": "where am I?"})
    request = yield pi.wait_for_event("extension_ui_request")
    call = nativetools.parse_tool_call(request)
    pending.add(call, timed_out.append)
    yield pi.send({"type": "abort"})
    yield pi.wait_for_event("agent_settled")

    cancelled = [
        pending.end_tool_call(tool_call_id)
        for tool_call_id in map(nativetools.ended_tool_call_id, pi.events)
        if tool_call_id is not None
    ]
    assert cancelled == [call]
    assert pending.pending() == []
    assert timed_out == []
    event_types = [event["type"] for event in pi.events]
    assert event_types.index("tool_execution_end") < event_types.index("agent_end")
    (tool_end,) = pi.events_of("tool_execution_end")
    assert tool_end["isError"] is True
    assert tool_end["result"]["content"][0]["text"] == "get_location was aborted"
    assert len(fake_llm.requests) == 1

    # A late answer is ignored and the agent keeps working.
    answer(pi, nativetools.tool_result_response(call, result="too late"))
    yield pi.send({"type": "prompt", "message": "still there?"})
    yield pi.wait_for_event("agent_settled", 2)
    agent_end = pi.events_of("agent_end")[1]
    assert agent_end["messages"][-1]["content"] == [{"type": "text", "text": "Still here."}]
    assert pi.events_of("tool_execution_end") == [tool_end]


@pytest_twisted.inlineCallbacks
def test_a_changed_tool_set_applies_from_the_next_run(spawn_pi_rpc, fake_llm, tmp_path):
    tools_file = tmp_path / "tools.json"
    renamed = NativeTool(
        name="get_location", description="Where the phone is, roughly.", parameters=LOCATION_SCHEMA
    )
    fake_llm.script(Text("one"), Text("two"), Text("three"))
    pi = start_pi(spawn_pi_rpc, tools_file, [GET_LOCATION])

    yield pi.send({"type": "prompt", "message": "first"})
    yield pi.wait_for_event("agent_settled", 1)
    nativetools.write_tools_file(tools_file, [GET_BATTERY, renamed])
    yield pi.send({"type": "prompt", "message": "second"})
    yield pi.wait_for_event("agent_settled", 2)
    tools_file.unlink()
    yield pi.send({"type": "prompt", "message": "third"})
    yield pi.wait_for_event("agent_settled", 3)

    first, second, third = (offered_tools(request) for request in fake_llm.requests)
    assert set(first) == {"read", "bash", "edit", "write", "get_location"}
    assert set(second) == {"read", "bash", "edit", "write", "get_location", "get_battery"}
    assert second["get_location"]["description"] == "Where the phone is, roughly."
    assert set(third) == {"read", "bash", "edit", "write"}


@pytest_twisted.inlineCallbacks
def test_native_tools_come_alone_without_builtin_tools(spawn_pi_rpc, fake_llm, tmp_path):
    fake_llm.script(Text("ok"))
    pi = start_pi(spawn_pi_rpc, tmp_path / "tools.json", [GET_BATTERY], "--no-builtin-tools")

    yield pi.send({"type": "prompt", "message": "hi"})
    yield pi.wait_for_event("agent_settled")

    assert set(offered_tools(fake_llm.requests[0])) == {"get_battery"}


@pytest_twisted.inlineCallbacks
def test_a_confirm_dialog_round_trips(spawn_pi_rpc):
    pi = spawn_pi_rpc("--no-session", "-e", str(DIALOGS_EXTENSION))

    # pi answers a prompt running an extension command only once the command is over.
    prompted = pi.send({"type": "prompt", "message": "/dialog confirm"})
    request = yield pi.wait_for_event("extension_ui_request", 1)
    dialog = nativetools.parse_dialog(request)
    answered_before = prompted.called
    answer(pi, nativetools.dialog_response({"id": dialog.id, "confirmed": True}))
    notice = yield pi.wait_for_event("extension_ui_request", 2)
    response = yield prompted

    assert answered_before is False
    assert response["success"] is True
    assert (dialog.method, dialog.timeout) == ("confirm", None)
    assert (request["title"], request["message"]) == ("Proceed?", "The test asks.")
    assert nativetools.parse_tool_call(request) is None
    assert nativetools.is_notice(notice)
    assert notice["message"] == "dialog confirm answered true"


@pytest_twisted.inlineCallbacks
def test_a_dialog_with_a_timeout_is_answered_by_pi_itself(spawn_pi_rpc):
    pi = spawn_pi_rpc("--no-session", "-e", str(DIALOGS_EXTENSION))

    prompted = pi.send({"type": "prompt", "message": "/dialog select 50"})
    request = yield pi.wait_for_event("extension_ui_request", 1)
    notice = yield pi.wait_for_event("extension_ui_request", 2)
    yield prompted

    dialog = nativetools.parse_dialog(request)
    assert (dialog.method, dialog.timeout) == ("select", 0.05)
    assert request["options"] == ["red", "green"]
    assert notice["message"] == "dialog select answered null"


@pytest_twisted.inlineCallbacks
def test_a_dialog_and_a_native_call_in_one_run_are_told_apart(spawn_pi_rpc, fake_llm, tmp_path):
    fake_llm.script(
        Reply(
            ToolCall("confirm_action", {"question": "Share your location?"}),
            ToolCall("get_location", {"accuracy": "coarse"}),
        ),
        Text("Done."),
    )
    pi = start_pi(
        spawn_pi_rpc, tmp_path / "tools.json", [GET_LOCATION], "-e", str(DIALOGS_EXTENSION)
    )

    yield pi.send({"type": "prompt", "message": "share it"})
    first = yield pi.wait_for_event("extension_ui_request", 1)
    second = yield pi.wait_for_event("extension_ui_request", 2)
    requests = [first, second]
    (call,) = filter(None, map(nativetools.parse_tool_call, requests))
    (dialog,) = filter(None, map(nativetools.parse_dialog, requests))
    answer(pi, nativetools.dialog_response({"id": dialog.id, "confirmed": False}))
    answer(pi, nativetools.tool_result_response(call, result="Lyon"))
    yield pi.wait_for_event("agent_settled")

    assert dialog.request["message"] == "Share your location?"
    tool_messages = {
        message["tool_call_id"]: message["content"]
        for message in fake_llm.requests[1]["messages"]
        if message["role"] == "tool"
    }
    assert tool_messages == {"call_1_0": "declined", "call_1_1": "Lyon"}


@pytest_twisted.inlineCallbacks
def test_native_tools_stay_after_new_session(spawn_pi_rpc, fake_llm, tmp_path):
    fake_llm.script(Text("one"), Text("two"))
    pi = start_pi(spawn_pi_rpc, tmp_path / "tools.json", [GET_LOCATION])

    yield pi.send({"type": "prompt", "message": "first"})
    yield pi.wait_for_event("agent_settled", 1)
    reset = yield pi.send({"type": "new_session"})
    yield pi.send({"type": "prompt", "message": "second"})
    yield pi.wait_for_event("agent_settled", 2)

    assert reset["success"] is True
    assert "get_location" in offered_tools(fake_llm.requests[1])


@pytest_twisted.inlineCallbacks
def test_an_unreadable_tools_file_is_reported_and_keeps_the_previous_set(
    spawn_pi_rpc, fake_llm, tmp_path
):
    tools_file = tmp_path / "tools.json"
    fake_llm.script(Text("one"), Text("two"))
    pi = start_pi(spawn_pi_rpc, tools_file, [GET_LOCATION])

    yield pi.send({"type": "prompt", "message": "first"})
    yield pi.wait_for_event("agent_settled", 1)
    tools_file.write_text('{"not": "a list"}')
    yield pi.send({"type": "prompt", "message": "second"})
    yield pi.wait_for_event("agent_settled", 2)

    (error,) = pi.events_of("extension_error")
    assert error["event"] == "before_agent_start"
    assert error["extensionPath"].endswith("session.ts")
    assert "expected a JSON array of native tools" in error["error"]
    assert "get_location" in offered_tools(fake_llm.requests[1])
