"""The protocol schema: a valid JSON Schema that covers every method and server event,
agrees with the code and docs/protocol.md, and rejects frames that are wrong."""

import json
import re

import pytest
from jsonschema import Draft202012Validator
from twisted.web.test.requesthelper import DummyRequest

import piserver.common.errors as errors
from piserver.api.handoff import HandoffMethods
from piserver.api.methods import RpcMethods
from piserver.api.picommands import TYPED
from piserver.api.usage import UsageMethods
from piserver.api.workspace import WorkspaceMethods
from piserver.schema import SchemaResource, load, schema_bytes
from piserver.sessions.accounting import Accounting
from tests.support.piagent import repository_root
from tests.support.schema import SCHEMA, frame_problems, params_problems

HELLO_RESULT = {
    "connectionId": "c1",
    "server": {"name": "pi-server", "version": "0.1.0"},
    "capabilities": {"resume": True, "eventModes": ["full", "delta"]},
    "agent": {
        "name": "pi",
        "package": "@earendil-works/pi-coding-agent",
        "version": "1.6.0",
        "node": None,
    },
}


class _Usage:
    def table(self):
        return UsageMethods(None, Accounting(None), None).table()


class _Workspace:
    def table(self):
        return WorkspaceMethods(None, None, None, None).table()


def response(result, request_id="r1"):
    return {"v": 1, "kind": "response", "id": request_id, "ok": True, "result": result}


def event(event_type, payload, seq=1):
    return {
        "v": 1,
        "kind": "event",
        "sessionId": "s1",
        "seq": seq,
        "type": event_type,
        "payload": {"type": event_type, **payload},
    }


def test_the_schema_is_valid_json_schema():
    Draft202012Validator.check_schema(SCHEMA)
    for part in ("methods", "events"):
        for entry in SCHEMA[part].values():
            for schema in entry.values() if part == "methods" else [entry]:
                Draft202012Validator.check_schema({**schema, "$defs": SCHEMA["$defs"]})


def test_every_method_of_the_table_has_a_schema_and_no_other():
    table = RpcMethods(
        usage=_Usage(),
        sessions=object(),
        repos=object(),
        workspace=_Workspace(),
        handoff=HandoffMethods(object(), object()),
    ).table()
    assert sorted(table) == sorted(SCHEMA["methods"])
    for entry in SCHEMA["methods"].values():
        assert set(entry) == {"params", "result"}


def test_typed_pi_commands_match_their_fields():
    for name, command in TYPED.items():
        params = SCHEMA["methods"][name]["params"]
        # idempotencyKey is the dispatcher's (wire/idempotency.py), never pi's.
        assert set(params["properties"]) - {"idempotencyKey"} == {f.name for f in command.fields}
        assert set(params.get("required", [])) == {f.name for f in command.fields if f.required}


def test_error_codes_are_the_servers():
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.RpcError)
    }
    assert set(SCHEMA["$defs"]["errorCode"]["enum"]) == codes


def test_protocol_md_documents_every_method():
    text = (repository_root() / "docs" / "protocol.md").read_text()
    methods_section = text.split("## Methods", 1)[1]
    documented = set(re.findall(r"`([a-z_.]+)`", methods_section))
    missing = set(SCHEMA["methods"]) - documented
    assert not missing, f"docs/protocol.md does not document {sorted(missing)}"
    headings = set(re.findall(r"^### `([^`]+)`", text, re.M))
    assert headings <= set(SCHEMA["methods"]), headings - set(SCHEMA["methods"])
    events = set(re.findall(r"`([a-z_]+)[` ]", text))
    assert set(SCHEMA["events"]) <= events


def test_good_frames_validate():
    assert frame_problems(response(HELLO_RESULT), "hello") == []
    assert (
        frame_problems(event("native_tool_request", {"callId": "c", "toolName": "t", "args": {}}))
        == []
    )
    assert frame_problems(event("message_update", {"assistantMessageEvent": {}})) == []
    assert (
        frame_problems(
            {
                "v": 1,
                "kind": "response",
                "id": None,
                "ok": False,
                "error": {"code": "parse_error", "message": "not JSON"},
            }
        )
        == []
    )
    assert params_problems("set_thinking_level", {"level": "high"}) == []


@pytest.mark.parametrize(
    "frame, method",
    [
        ({**event("agent_start", {}), "seq": "1"}, None),
        (
            {
                "v": 2,
                "kind": "event",
                "sessionId": "s",
                "seq": 1,
                "type": "x",
                "payload": {"type": "x"},
            },
            None,
        ),
        (event("native_tool_request", {"toolName": "t", "args": {}}), None),
        (event("session_progress", {"stage": "upload", "message": "x"}), None),
        ({**event("agent_start", {}), "payload": {"type": "turn_start"}}, None),
        (response({"server": HELLO_RESULT["server"], "capabilities": {"resume": True}}), "hello"),
        (response({**HELLO_RESULT, "token": "leaked"}), "hello"),
        (
            response({"sessionId": "s", "status": "busy", "lastSeq": 1, "catchUp": "live"}),
            "session.attach",
        ),
        (
            {
                "v": 1,
                "kind": "response",
                "id": "r",
                "ok": False,
                "error": {"code": "made_up", "message": "x"},
            },
            None,
        ),
        ({"v": 1, "kind": "response", "id": "r", "ok": True}, None),
    ],
)
def test_a_wrong_frame_fails_validation(frame, method):
    assert frame_problems(frame, method) != []


def test_wrong_params_fail_validation():
    assert params_problems("set_thinking_level", {"level": "extreme"}) != []
    assert params_problems("prompt", {}) != []


def test_served_at_schema_json():
    request = DummyRequest([b"schema.json"])
    body = SchemaResource().render_GET(request)
    assert body == schema_bytes()
    assert json.loads(body) == load()
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/schema+json"]
