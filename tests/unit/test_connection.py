"""Connection: request rate limits and what error replies may say."""

import json

from twisted.internet.task import Clock

from piserver.wire.connection import Connection
from piserver.wire.dispatch import Dispatcher
from piserver.wire.ratelimit import TokenBucket


class Sink:
    def __init__(self):
        self.frames = []

    def send_frame(self, data):
        self.frames.append(json.loads(data))

    def close(self, code, reason):
        pass


def request(request_id):
    return json.dumps({"v": 1, "kind": "request", "id": request_id, "method": "ping"}).encode()


def test_requests_over_the_rate_are_answered_rate_limited():
    clock = Clock()
    sink = Sink()
    connection = Connection(
        "c",
        Dispatcher({"ping": lambda c, r: {"pong": True}}),
        sink,
        requests=TokenBucket(rate=2, burst=4, clock=clock),
    )
    for n in range(5):
        connection.frame_received(request(f"r{n}"))
    assert [f["ok"] for f in sink.frames] == [True] * 4 + [False]
    assert sink.frames[4]["error"]["code"] == "rate_limited"
    assert sink.frames[4]["id"] == "r4"
    clock.advance(0.5)  # one more token
    connection.frame_received(request("r5"))
    connection.frame_received(request("r6"))
    assert [f["ok"] for f in sink.frames[5:]] == [True, False]
    clock.advance(10)  # the bucket refills up to the burst, no more
    for n in range(5):
        connection.frame_received(request(f"s{n}"))
    assert [f["ok"] for f in sink.frames[7:]] == [True] * 4 + [False]


def test_unparseable_frames_are_answered_without_spending_tokens():
    clock = Clock()
    sink = Sink()
    connection = Connection(
        "c",
        Dispatcher({"ping": lambda c, r: {}}),
        sink,
        requests=TokenBucket(rate=1, burst=1, clock=clock),
    )
    connection.frame_received(b"garbage")
    connection.frame_received(request("r1"))
    assert [f.get("error", {}).get("code") for f in sink.frames] == ["parse_error", None]


def test_error_messages_are_redacted_of_secrets():
    from piserver.common.errors import AgentCommandFailed

    def fails(connection, request):
        raise AgentCommandFailed("401 Incorrect API key provided: sk-live-secret-123456")

    sink = Sink()
    connection = Connection(
        "c",
        Dispatcher({"ping": fails}),
        sink,
        redact=lambda text: text.replace("sk-live-secret-123456", "[x]"),
    )
    connection.frame_received(request("r1"))
    (reply,) = sink.frames
    assert reply["error"] == {
        "code": "agent_error",
        "message": "401 Incorrect API key provided: [x]",
    }


class LimitedSink(Sink):
    max_frame_size = 1000


def test_an_answer_over_the_frame_limit_becomes_response_too_large():
    """Issue 21 point 13: never dropped silently; a small answer still goes out."""
    sink = LimitedSink()
    connection = Connection(
        "c",
        Dispatcher(
            {
                "ping": lambda c, r: {"pong": True},
                "big": lambda c, r: {"name": "x" * 5000},
            }
        ),
        sink,
    )
    connection.frame_received(
        json.dumps({"v": 1, "kind": "request", "id": "b1", "method": "big"}).encode()
    )
    connection.frame_received(request("p1"))
    assert [f["id"] for f in sink.frames] == ["b1", "p1"]
    assert sink.frames[0]["ok"] is False
    assert sink.frames[0]["error"]["code"] == "response_too_large"
    assert "--max-frame-size of 1000 bytes" in sink.frames[0]["error"]["message"]
    assert sink.frames[1]["ok"] is True


def test_an_event_over_the_frame_limit_becomes_event_too_large():
    """Issue 21 point 13 for events: the client gets a small event at the same seq naming
    the event's type, its size and the limit; a small event goes out as it is."""
    from piserver.wire.envelope import encode_event, encode_payload
    from tests.support.schema import frame_problems
    from tests.support.seedclient import decode_event

    sink = LimitedSink()
    connection = Connection("c", Dispatcher({}), sink)
    files = [{"path": f"f{n}.txt", "status": "added"} for n in range(100)]
    big = {"type": "files_changed", "base": "abc", "files": files}
    connection.send(encode_event("s1", 7, "files_changed", encode_payload(big)))
    small_payload = encode_payload({"type": "session_progress", "stage": "commit", "message": "y"})
    connection.send(encode_event("s1", 8, "session_progress", small_payload))
    replaced, small = sink.frames
    assert replaced["seq"] == 7 and replaced["type"] == "event_too_large"
    assert replaced["payload"]["eventType"] == "files_changed"
    assert replaced["payload"]["limit"] == 1000 and replaced["payload"]["size"] > 1000
    assert small["seq"] == 8 and small["type"] == "session_progress"
    for frame in sink.frames:
        assert frame_problems(frame) == []
        decode_event(frame)


def test_an_answer_never_carries_a_lone_surrogate():
    """Issue 21 point 14: JSON sent is UTF-8 with no lone surrogate, not even escaped (a
    strict decoder refuses it): one in a result becomes U+FFFD; a request id is echoed as
    the client sent it."""
    from piserver.wire.envelope import encode_result

    name = b"\xff.txt".decode("utf-8", "surrogateescape")
    reply = json.loads(encode_result("\ud800", {"path": name, "n": [name]}).decode("utf-8"))
    assert reply["result"] == {"path": "\ufffd.txt", "n": ["\ufffd.txt"]}
    assert reply["id"] == "\ud800"
