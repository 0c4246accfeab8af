import json
import math

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel

from piserver.agents import nativetools
from piserver.agents.nativetools import (
    ExtensionDialog,
    NativeTool,
    NativeToolAnswer,
    NativeToolCall,
    PendingCalls,
    PendingDialogs,
    cancelled_response,
    dialog_response,
    ended_tool_call_id,
    extension_args,
    is_notice,
    parse_dialog,
    parse_tool_answer,
    parse_tool_call,
    tool_result_response,
    validate_native_tools,
    write_tools_file,
)
from piserver.common.errors import InvalidParams

SCHEMA = {"type": "object", "properties": {"accuracy": {"type": "string"}}}


def tool(name="get_location", description="Where the phone is.", parameters=SCHEMA, **extra):
    return {"name": name, "description": description, "parameters": parameters, **extra}


def invalid(value) -> str:
    with pytest.raises(InvalidParams) as error:
        validate_native_tools(value)
    assert error.value.code == "invalid_params"
    return error.value.message


def call_request(request_id="req-1", payload=None, **overrides):
    if payload is None:
        payload = {"toolCallId": "call_1_0", "toolName": "get_location", "args": {"a": 1}}
    return {
        "type": "extension_ui_request",
        "id": request_id,
        "method": "input",
        "title": nativetools.CALL_TITLE,
        "placeholder": json.dumps(payload),
        **overrides,
    }


def make_call(call_id="req-1", tool_call_id="call_1_0", tool_name="get_location"):
    return NativeToolCall(call_id=call_id, tool_call_id=tool_call_id, tool_name=tool_name, args={})


@pytest.fixture
def log_events(monkeypatch):
    events = []
    monkeypatch.setattr(nativetools, "log", Logger(observer=events.append))
    return events


# validate_native_tools


def test_valid_tools_come_back_in_order():
    battery = tool("get_battery", "Battery level.", {"type": "object"})
    no_type = tool("take-photo", "", {"properties": {}})

    tools = validate_native_tools([tool(), battery, no_type])

    assert tools == [
        NativeTool("get_location", "Where the phone is.", SCHEMA),
        NativeTool("get_battery", "Battery level.", {"type": "object"}),
        NativeTool("take-photo", "", {"properties": {}}),
    ]


def test_an_empty_list_declares_no_tools():
    assert validate_native_tools([]) == []


def test_extra_keys_of_a_tool_are_ignored():
    (declared,) = validate_native_tools([tool(icon="pin")])

    assert declared.to_json() == tool()


@pytest.mark.parametrize("value", [None, {}, "get_location", tool()])
def test_the_declaration_must_be_a_list(value):
    assert "nativeTools must be a list" in invalid(value)


@pytest.mark.parametrize("entry", ["get_location", None, ["get_location"]])
def test_each_tool_must_be_an_object(entry):
    assert invalid([tool(), entry]).startswith("nativeTools[1] must be an object")


@pytest.mark.parametrize(
    "name", ["", "a" * 65, "get location", "get.location", "ünïcode", 7, None, "x\n"]
)
def test_a_bad_name_is_rejected_naming_the_entry(name):
    message = invalid([tool(name=name)])

    assert message.startswith("nativeTools[0]: tool name")
    assert repr(name) in message


def test_a_missing_name_is_rejected():
    entry = tool()
    del entry["name"]

    assert invalid([entry]).startswith("nativeTools[0]: tool name None")


def test_names_of_64_allowed_characters_are_accepted():
    name = "A-z_09" + "x" * 58

    assert validate_native_tools([tool(name=name)])[0].name == name


@pytest.mark.parametrize("name", sorted(nativetools.BUILTIN_TOOL_NAMES))
def test_a_builtin_tool_name_is_rejected(name):
    message = invalid([tool(name=name)])

    assert message == f"native tool {name!r} clashes with pi's built-in tool of that name"


def test_builtin_names_are_pis():
    assert nativetools.BUILTIN_TOOL_NAMES == {"read", "bash", "edit", "write", "grep", "find", "ls"}


def test_a_duplicate_is_rejected_naming_it():
    message = invalid([tool(), tool("get_battery"), tool()])

    assert message == "native tool 'get_location' is declared twice"


@pytest.mark.parametrize("description", [None, 3, ["a"]])
def test_the_description_must_be_a_string(description):
    message = invalid([tool(description=description)])

    assert message == "native tool 'get_location': description must be a string"


def test_a_missing_description_is_rejected():
    entry = tool()
    del entry["description"]

    assert "'get_location': description must be a string" in invalid([entry])


@pytest.mark.parametrize("parameters", [None, "object", [], 1])
def test_parameters_must_be_an_object(parameters):
    message = invalid([tool(parameters=parameters)])

    assert message == "native tool 'get_location': parameters must be a JSON Schema object"


@pytest.mark.parametrize("schema_type", ["string", "array", None, ["object"]])
def test_parameters_must_describe_an_object(schema_type):
    message = invalid([tool(parameters={"type": schema_type})])

    assert message == "native tool 'get_location': parameters must have type \"object\""


def test_parameter_properties_must_be_an_object():
    message = invalid([tool(parameters={"type": "object", "properties": ["accuracy"]})])

    assert message == "native tool 'get_location': parameters.properties must be an object"


def test_the_first_bad_tool_is_named():
    message = invalid([tool(), tool("get_battery", parameters=None), tool("ls")])

    assert "'get_battery'" in message


# The declarations file and pi's arguments


def test_the_tools_file_holds_the_declarations(tmp_path):
    path = tmp_path / "tools.json"
    tools = validate_native_tools([tool(), tool("get_battery", "Battery.", {})])

    write_tools_file(path, tools)

    assert json.loads(path.read_text()) == [tool(), tool("get_battery", "Battery.", {})]
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_tools_file_is_replaced_whole(tmp_path):
    path = tmp_path / "tools.json"
    write_tools_file(path, validate_native_tools([tool(), tool("get_battery")]))

    write_tools_file(path, [])

    assert json.loads(path.read_text()) == []
    assert [entry.name for entry in tmp_path.iterdir()] == ["tools.json"]


def test_extension_args_load_the_packaged_extension(tmp_path):
    args = extension_args(tmp_path / "-prompt.md", tmp_path / "-odd@name.json")

    assert args == [
        "-e",
        str(nativetools.EXTENSION_PATH),
        f"--system-prompt-file={tmp_path / '-prompt.md'}",
        f"--native-tools-file={tmp_path / '-odd@name.json'}",
    ]
    assert nativetools.EXTENSION_PATH.is_file()
    assert extension_args(tmp_path / "prompt.md", None) == [
        "-e",
        str(nativetools.EXTENSION_PATH),
        f"--system-prompt-file={tmp_path / 'prompt.md'}",
    ]
    assert nativetools.CALL_TITLE in nativetools.EXTENSION_PATH.read_text()


# Native tool calls


def test_a_marked_input_request_is_a_tool_call():
    call = parse_tool_call(call_request())

    assert call == NativeToolCall(
        call_id="req-1", tool_call_id="call_1_0", tool_name="get_location", args={"a": 1}
    )
    assert call.request_payload() == {
        "callId": "req-1",
        "toolName": "get_location",
        "args": {"a": 1},
    }


@pytest.mark.parametrize(
    "event",
    [
        {"type": "extension_ui_request", "id": "x", "method": "input", "title": "Name?"},
        call_request(method="editor"),
        call_request(type="extension_ui_response"),
        {"type": "tool_execution_end", "toolCallId": "call_1_0"},
        {"type": "extension_ui_request", "id": "x", "method": "notify", "message": "hi"},
    ],
)
def test_other_events_are_not_tool_calls(event, log_events):
    assert parse_tool_call(event) is None
    assert log_events == []


@pytest.mark.parametrize(
    "event",
    [
        call_request(placeholder="not json"),
        call_request(placeholder=None),
        call_request(payload={"toolName": "get_location", "args": {}}),
        call_request(payload={"toolCallId": "c", "toolName": "get_location", "args": []}),
        call_request(payload={"toolCallId": 5, "toolName": "get_location", "args": {}}),
        call_request(payload=["toolCallId"]),
        call_request(request_id=None),
        {
            "type": "extension_ui_request",
            "id": "x",
            "method": "input",
            "title": nativetools.CALL_TITLE,
        },
    ],
)
def test_a_malformed_call_request_is_logged_and_ignored(event, log_events):
    assert parse_tool_call(event) is None
    assert [entry["log_level"] for entry in log_events] == [LogLevel.warn]
    assert log_events[0]["request_id"] == event.get("id")


def test_a_result_answer_carries_json():
    response = tool_result_response(make_call(), result={"lat": 48.8, "city": "Zürich"})

    assert response["type"] == "extension_ui_response"
    assert response["id"] == "req-1"
    assert json.loads(response["value"]) == {"result": {"lat": 48.8, "city": "Zürich"}}
    assert set(response) == {"type", "id", "value"}


def test_a_missing_result_is_null():
    response = tool_result_response(make_call())

    assert json.loads(response["value"]) == {"result": None}


def test_an_error_answer_carries_the_message():
    response = tool_result_response(make_call(), result="ignored", error="permission denied")

    assert json.loads(response["value"]) == {"error": "permission denied"}


def test_a_result_that_is_not_json_is_refused():
    with pytest.raises(ValueError):
        tool_result_response(make_call(), result=math.nan)


def test_a_cancellation_answer():
    assert cancelled_response(make_call()) == {
        "type": "extension_ui_response",
        "id": "req-1",
        "cancelled": True,
    }


def test_the_timeout_message_names_the_tool():
    assert nativetools.unanswered_message("get_location") == (
        "no connected device answered get_location"
    )


def test_tool_execution_end_names_the_ended_call():
    assert ended_tool_call_id({"type": "tool_execution_end", "toolCallId": "call_1_0"}) == (
        "call_1_0"
    )
    assert ended_tool_call_id({"type": "tool_execution_start", "toolCallId": "call_1_0"}) is None
    assert ended_tool_call_id({"type": "tool_execution_end"}) is None


# A client's native_tool_response


def test_a_result_answer_from_a_client():
    answer = parse_tool_answer({"callId": "req-1", "result": {"lat": 1}})

    assert answer == NativeToolAnswer(call_id="req-1", result={"lat": 1}, error=None)


def test_an_error_answer_from_a_client():
    answer = parse_tool_answer({"callId": "req-1", "error": {"message": "denied"}})

    assert answer == NativeToolAnswer(call_id="req-1", result=None, error="denied")


def test_an_answer_with_neither_is_a_null_result():
    assert parse_tool_answer({"callId": "req-1"}) == NativeToolAnswer(call_id="req-1")


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (None, "must be an object"),
        ({}, "needs a callId"),
        ({"callId": ""}, "needs a callId"),
        ({"callId": 3}, "needs a callId"),
        ({"callId": "c", "result": 1, "error": {"message": "x"}}, "not both"),
        ({"callId": "c", "error": "denied"}, "error must be {message}"),
        ({"callId": "c", "error": {"message": 5}}, "error must be {message}"),
        ({"callId": "c", "result": [math.inf]}, "not plain JSON"),
    ],
)
def test_a_bad_answer_from_a_client_is_rejected(params, fragment):
    with pytest.raises(InvalidParams) as error:
        parse_tool_answer(params)

    assert fragment in error.value.message


# Extension dialogs


def test_a_dialog_request():
    event = {
        "type": "extension_ui_request",
        "id": "d1",
        "method": "confirm",
        "title": "Proceed?",
        "message": "Sure?",
        "timeout": 5000,
    }

    assert parse_dialog(event) == ExtensionDialog(
        id="d1", method="confirm", request=event, timeout=5.0
    )


@pytest.mark.parametrize("method", sorted(nativetools.DIALOG_METHODS))
def test_every_dialog_method_is_a_dialog(method):
    event = {"type": "extension_ui_request", "id": "d1", "method": method, "title": "T"}

    dialog = parse_dialog(event)

    assert (dialog.method, dialog.timeout) == (method, None)


@pytest.mark.parametrize("timeout", [0, -5, "100", True, math.inf, None])
def test_a_dialog_without_a_usable_timeout_has_none(timeout):
    event = {"type": "extension_ui_request", "id": "d", "method": "select", "timeout": timeout}

    assert parse_dialog(event).timeout is None


@pytest.mark.parametrize(
    "event",
    [
        call_request(),
        call_request(placeholder="broken"),
        {"type": "extension_ui_request", "id": "n", "method": "notify", "message": "hi"},
        {"type": "extension_ui_request", "method": "confirm", "title": "no id"},
        {"type": "agent_start"},
    ],
)
def test_tool_calls_notices_and_other_events_are_not_dialogs(event):
    assert parse_dialog(event) is None


@pytest.mark.parametrize("method", sorted(nativetools.NOTICE_METHODS))
def test_fire_and_forget_requests_are_notices(method):
    assert is_notice({"type": "extension_ui_request", "id": "n", "method": method})


@pytest.mark.parametrize(
    "event",
    [
        {"type": "extension_ui_request", "id": "d", "method": "confirm"},
        call_request(),
        {"type": "message_update", "method": "notify"},
    ],
)
def test_dialogs_and_other_events_are_not_notices(event):
    assert not is_notice(event)


@pytest.mark.parametrize(
    "params",
    [
        {"id": "d1", "value": "red"},
        {"id": "d1", "value": ""},
        {"id": "d1", "confirmed": True},
        {"id": "d1", "confirmed": False},
        {"id": "d1", "cancelled": True},
    ],
)
def test_a_client_dialog_answer_becomes_pis(params):
    assert dialog_response({**params, "sessionId": "ignored"}) == {
        "type": "extension_ui_response",
        **params,
    }


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ([], "must be an object"),
        ({"value": "x"}, "needs an id"),
        ({"id": 4, "value": "x"}, "needs an id"),
        ({"id": "d1"}, "exactly one of value, confirmed, cancelled"),
        ({"id": "d1", "value": "x", "cancelled": True}, "exactly one"),
        ({"id": "d1", "value": 3}, "value must be a string"),
        ({"id": "d1", "confirmed": "yes"}, "confirmed must be a boolean"),
        ({"id": "d1", "confirmed": 1}, "confirmed must be a boolean"),
        ({"id": "d1", "cancelled": False}, "cancelled must be true"),
    ],
)
def test_a_bad_client_dialog_answer_is_rejected(params, fragment):
    with pytest.raises(InvalidParams) as error:
        dialog_response(params)

    assert fragment in error.value.message


# PendingCalls


def test_a_call_is_pending_until_answered():
    pending = PendingCalls(Clock())
    call = make_call()
    pending.add(call, on_timeout=pytest.fail)

    assert pending.pending() == [call]
    assert "req-1" in pending and len(pending) == 1
    assert pending.resolve("req-1") == call
    assert pending.pending() == []


def test_the_first_answer_wins():
    clock = Clock()
    pending = PendingCalls(clock)
    pending.add(make_call(), on_timeout=pytest.fail)

    first = pending.resolve("req-1")
    second = pending.resolve("req-1")

    assert first == make_call()
    assert second is None
    assert clock.getDelayedCalls() == []


def test_an_unknown_call_resolves_to_none():
    pending = PendingCalls(Clock())
    pending.add(make_call(), on_timeout=pytest.fail)

    assert pending.resolve("nope") is None
    assert pending.cancel("nope") is None
    assert pending.pending() == [make_call()]


def test_a_call_times_out_after_the_default_120_seconds():
    clock = Clock()
    pending = PendingCalls(clock)
    timed_out = []
    pending.add(make_call(), on_timeout=timed_out.append)

    clock.advance(119.9)
    assert timed_out == []
    clock.advance(0.1)

    assert timed_out == [make_call()]
    assert pending.pending() == []
    assert pending.resolve("req-1") is None


def test_the_timeout_is_an_option():
    clock = Clock()
    pending = PendingCalls(clock, timeout=5)
    timed_out = []
    pending.add(make_call(), on_timeout=timed_out.append)

    clock.advance(5)

    assert timed_out == [make_call()]


def test_an_answered_call_does_not_time_out():
    clock = Clock()
    pending = PendingCalls(clock)
    timed_out = []
    pending.add(make_call(), on_timeout=timed_out.append)
    pending.resolve("req-1")

    clock.advance(500)

    assert timed_out == []


def test_a_cancelled_call_is_gone_and_does_not_time_out():
    clock = Clock()
    pending = PendingCalls(clock)
    timed_out = []
    pending.add(make_call(), on_timeout=timed_out.append)

    assert pending.cancel("req-1") == make_call()
    assert pending.resolve("req-1") is None
    clock.advance(500)
    assert timed_out == []


def test_cancel_all_returns_every_pending_call_in_order():
    clock = Clock()
    pending = PendingCalls(clock)
    calls = [make_call("a", "c0"), make_call("b", "c1"), make_call("c", "c2")]
    for call in calls:
        pending.add(call, on_timeout=pytest.fail)
    pending.resolve("b")

    assert pending.cancel_all() == [calls[0], calls[2]]
    assert pending.pending() == []
    assert clock.getDelayedCalls() == []


def test_calls_are_listed_in_arrival_order_for_a_late_device():
    pending = PendingCalls(Clock())
    calls = [make_call("b", "c0"), make_call("a", "c1")]
    for call in calls:
        pending.add(call, on_timeout=pytest.fail)

    assert pending.pending() == calls


def test_a_call_id_cannot_be_pending_twice():
    pending = PendingCalls(Clock())
    pending.add(make_call(), on_timeout=pytest.fail)

    with pytest.raises(ValueError):
        pending.add(make_call(), on_timeout=pytest.fail)


def test_an_ended_tool_call_takes_its_pending_call_out():
    clock = Clock()
    pending = PendingCalls(clock)
    calls = [make_call("a", "call_1_0"), make_call("b", "call_1_1")]
    for call in calls:
        pending.add(call, on_timeout=pytest.fail)

    assert pending.end_tool_call("call_1_1") == calls[1]
    assert pending.end_tool_call("call_1_1") is None
    assert pending.end_tool_call("call_9_9") is None
    assert pending.pending() == [calls[0]]
    assert len(clock.getDelayedCalls()) == 1


def test_a_failing_timeout_handler_is_logged(log_events):
    clock = Clock()
    pending = PendingCalls(clock, timeout=1)

    def explode(call):
        raise RuntimeError("boom")

    pending.add(make_call(), on_timeout=explode)
    clock.advance(1)

    assert [event["log_level"] for event in log_events] == [LogLevel.critical]
    assert log_events[0]["key"] == "req-1"
    assert pending.pending() == []


# PendingDialogs


def dialog(dialog_id="d1", timeout=None):
    request = {"type": "extension_ui_request", "id": dialog_id, "method": "confirm"}
    return ExtensionDialog(id=dialog_id, method="confirm", request=request, timeout=timeout)


def test_a_dialog_without_a_timeout_waits_forever():
    clock = Clock()
    dialogs = PendingDialogs(clock)
    dialogs.add(dialog(), on_timeout=pytest.fail)

    clock.advance(10**6)

    assert dialogs.pending() == [dialog()]
    assert clock.getDelayedCalls() == []


def test_a_dialog_is_dropped_when_pi_times_it_out():
    clock = Clock()
    dialogs = PendingDialogs(clock)
    expired = []
    dialogs.add(dialog("d1", timeout=5.0), on_timeout=expired.append)
    dialogs.add(dialog("d2"), on_timeout=expired.append)

    clock.advance(5)

    assert expired == [dialog("d1", timeout=5.0)]
    assert dialogs.pending() == [dialog("d2")]
    assert dialogs.resolve("d1") is None


def test_the_first_dialog_answer_wins():
    clock = Clock()
    dialogs = PendingDialogs(clock)
    dialogs.add(dialog("d1", timeout=5.0), on_timeout=pytest.fail)

    assert dialogs.resolve("d1") == dialog("d1", timeout=5.0)
    assert dialogs.resolve("d1") is None
    clock.advance(5)
