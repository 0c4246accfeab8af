"""
Property tests of the envelope parser and of a connection's dispatch: whatever
a client sends (any bytes, any JSON value, near-valid envelopes, broken JSON),
it gets exactly one response, with the request's id (and sessionId) echoed when
they were strings in a JSON object and null otherwise, and nothing raises.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import succeed

from piserver.api.methods import RpcMethods
from piserver.common.errors import InvalidParams
from piserver.wire.connection import Connection
from piserver.wire.dispatch import Dispatcher
from piserver.wire.envelope import BadFrame, Request, parse_request

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ERROR_CODES = {
    "parse_error",
    "invalid_request",
    "unknown_method",
    "invalid_params",
    "not_found",
    "internal_error",
}


def _boom(connection, request):
    raise RuntimeError("handler bug")


def _refuse(connection, request):
    raise InvalidParams("no")


METHODS = {
    **RpcMethods().table(),
    "answer": lambda connection, request: {"answer": 42},
    "later": lambda connection, request: succeed({"later": True}),
    "nothing": lambda connection, request: None,
    "boom": _boom,
    "refuse": _refuse,
    "not_an_object": lambda connection, request: ["a", "list"],
}


class FrameRecorder:
    """FrameSink keeping what a connection sends."""

    def __init__(self):
        self.frames = []
        self.closed = []

    def send_frame(self, data: bytes) -> None:
        self.frames.append(data)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def _reject_constant(name):
    raise ValueError(name)


def expected_echo(payload: bytes):
    """(id, sessionId) a response to ``payload`` must carry: the strings of a JSON object."""
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    request_id, session_id = obj.get("id"), obj.get("sessionId")
    return (
        request_id if isinstance(request_id, str) else None,
        session_id if isinstance(session_id, str) else None,
    )


def answer(payload: bytes) -> dict:
    """Feed one frame to a fresh connection; check and return its one response."""
    sink = FrameRecorder()
    connection = Connection("c1", Dispatcher(METHODS), sink)
    connection.frame_received(payload)
    assert sink.closed == []
    assert len(sink.frames) == 1, sink.frames
    (frame,) = sink.frames
    response = json.loads(frame.decode("utf-8"), parse_constant=_reject_constant)
    assert response["v"] == 1 and response["kind"] == "response"
    request_id, session_id = expected_echo(payload)
    assert response["id"] == request_id
    if session_id is None:
        assert "sessionId" not in response
    else:
        assert response["sessionId"] == session_id
    assert isinstance(response["ok"], bool)
    if response["ok"]:
        assert isinstance(response["result"], dict) and "error" not in response
    else:
        assert "result" not in response
        assert response["error"]["code"] in ERROR_CODES
        assert isinstance(response["error"]["message"], str) and response["error"]["message"]
    return response


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
method_names = st.sampled_from(sorted(METHODS) + ["no.such", "", "hello "]) | st.text(max_size=12)


@st.composite
def envelopes(draw):
    """Objects shaped like requests, each field present or not, right or wrong."""
    candidates = {
        "v": st.sampled_from([1, 1, 1, 0, 2, "1", 1.0, True, None]) | json_values,
        "kind": st.sampled_from(["request", "request", "response", "event", ""]) | json_values,
        "id": st.text(max_size=12) | st.sampled_from(["../../etc/passwd", "a" * 300]) | json_values,
        "method": method_names | json_values,
        "sessionId": st.text(max_size=12) | json_values,
        "params": st.fixed_dictionaries(
            {},
            optional={
                "client": st.fixed_dictionaries(
                    {},
                    optional={
                        "name": st.text(max_size=5) | json_values,
                        "version": st.text(max_size=5) | json_values,
                    },
                ),
                "type": json_values,
            },
        )
        | json_values,
    }
    envelope = {}
    for key, strategy in candidates.items():
        if draw(st.integers(0, 5)):  # mostly present
            envelope[key] = draw(strategy)
    envelope.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return envelope


def encodings(value):
    return st.sampled_from(
        [
            json.dumps(value).encode(),
            json.dumps(value, ensure_ascii=False).encode("utf-8"),
            json.dumps(value, indent=1).encode(),
        ]
    )


@FUZZ
@given(st.binary(max_size=300))
def test_parse_request_of_any_bytes_returns_or_raises_bad_frame(payload):
    try:
        request = parse_request(payload)
    except BadFrame as bad:
        assert bad.error.code in {"parse_error", "invalid_request"}
        assert bad.request_id is None or isinstance(bad.request_id, str)
    else:
        assert isinstance(request, Request)
        assert isinstance(request.params, dict)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_get_exactly_one_response(payload):
    answer(payload)


@FUZZ
@given(json_values.flatmap(encodings))
def test_any_json_value_gets_exactly_one_response(payload):
    answer(payload)


@FUZZ
@given(envelopes().flatmap(encodings))
def test_near_valid_envelopes_get_exactly_one_response(payload):
    response = answer(payload)
    envelope = json.loads(payload)
    if response["ok"]:
        assert envelope["v"] == 1 and type(envelope["v"]) is int
        assert envelope["kind"] == "request"
        assert envelope["method"] in METHODS


@FUZZ
@given(envelopes().flatmap(encodings), st.data())
def test_damaged_json_gets_exactly_one_response(payload, data):
    position = data.draw(st.integers(0, len(payload)))
    damage = data.draw(st.sampled_from(["cut", "insert", "replace"]))
    byte = bytes([data.draw(st.integers(0, 255))])
    if damage == "cut":
        payload = payload[:position]
    elif damage == "insert":
        payload = payload[:position] + byte + payload[position:]
    else:
        payload = payload[:position] + byte + payload[position + 1 :]
    answer(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nested past the recursion limit
        b'{"v": 1, "kind": "request", "id": "n", "method": "answer", "params": {"x": '
        + b"9" * 5000
        + b"}}",  # an integer past Python's digit limit
        b'{"v": 1, "kind": "request", "id": "f", "method": "answer", "params": {"x": 1e99999}}',
        b'{"v": 1, "kind": "request", "id": "n", "method": "answer", "params": {"x": NaN}}',
        b'{"v": 1e400, "kind": "request", "id": "v", "method": "answer"}',
        b'{"v": 1, "kind": "request", "id": "d", "id": 5, "method": "answer"}',
        b'{"v": 1, "kind": "request", "id": "\xc3\x28", "method": "answer"}',  # invalid UTF-8
        b"\xef\xbb\xbf" + b'{"v": 1, "kind": "request", "id": "bom", "method": "answer"}',
        b'{"v": 1, "kind": "request", "id": "u", "method": "answer"}\x00',
        b'{"v": 1, "kind": "request", "id": "\\u0000../x", "method": "answer"}',
    ],
)
def test_hostile_frames(payload):
    answer(payload)


def test_every_handler_outcome_is_one_response():
    def call(method):
        return answer(
            json.dumps(
                {"v": 1, "kind": "request", "id": method, "sessionId": "s", "method": method}
            ).encode()
        )

    assert call("answer")["result"] == {"answer": 42}
    assert call("later")["result"] == {"later": True}
    assert call("nothing")["result"] == {}
    assert call("boom")["error"]["code"] == "internal_error"
    assert call("refuse")["error"]["code"] == "invalid_params"
    assert call("not_an_object")["error"]["code"] == "internal_error"
    assert call("no.such")["error"]["code"] == "unknown_method"


@pytest.mark.parametrize("request_id", ["\\ud800", "a\\udfffb"])
def test_lone_surrogate_in_an_id_is_echoed(request_id):
    payload = b'{"v": 1, "kind": "request", "id": "' + request_id.encode() + b'", "method": 5}'
    response = answer(payload)
    assert response["id"] == json.loads(f'"{request_id}"')


def test_lone_surrogate_in_a_session_id_is_echoed():
    # (Hypothesis found it: the sessionId came back with U+FFFD in the surrogate's place.)
    payload = b'{"kind": "request", "id": "x", "method": "answer", "sessionId": " \\udc00"}'
    response = answer(payload)
    assert response["sessionId"] == " \udc00"
