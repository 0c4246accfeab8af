"""Event envelopes: pi's payload bytes spliced in as they are."""

import json

import pytest

from piserver.wire.envelope import encode_event, extended_object


@pytest.mark.parametrize(
    "session_id, seq, event_type",
    [
        ("s-1", 1, "message_update"),
        ("s-1", 10**20, "agent_settled"),
        ('quote " and é', 7, "line\u2028separator"),
    ],
)
def test_event_envelope_is_compact_json_around_the_payload_bytes(session_id, seq, event_type):
    payload = b'{"type": "x",  "spaced": [1, 2]}'
    frame = encode_event(session_id, seq, event_type, payload)
    assert frame.endswith(b',"payload":' + payload + b"}")
    assert json.loads(frame) == {
        "v": 1,
        "kind": "event",
        "sessionId": session_id,
        "seq": seq,
        "type": event_type,
        "payload": json.loads(payload),
    }
    head = {"v": 1, "kind": "event", "sessionId": session_id, "seq": seq, "type": event_type}
    compact = json.dumps(head, ensure_ascii=False, separators=(",", ":")).encode()
    assert frame.startswith(compact[:-1] + b",")


def test_a_lone_surrogate_in_a_type_is_escaped():
    frame = encode_event("s", 1, "\ud800", b"{}")
    assert frame == b'{"v":1,"kind":"event","sessionId":"s","seq":1,"type":"\\ud800","payload":{}}'


def test_fields_are_added_at_the_end_of_the_object_bytes():
    assert extended_object(b'{"a": 1.0}', {"é": True}) == '{"a": 1.0,"é":true}'.encode()
    assert json.loads(extended_object(b'{"a":[{}]}', {"b": None, "c": "x"})) == {
        "a": [{}],
        "b": None,
        "c": "x",
    }
    assert extended_object(b'{"a":1}', {}) == b'{"a":1}'
    assert extended_object(b'{"a":1} ', {"b": 2}) is None
