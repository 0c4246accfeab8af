"""EventStream: numbering, fan-out per mode, delta merging, replay and snapshots."""

import json

import pytest
from twisted.internet.task import Clock

from piserver.sessions.journal import Journal, JournalLimits
from piserver.sessions.stream import EventStream


class FakeConnection:
    def __init__(self, connection_id):
        self.connection_id = connection_id
        self.sent = []

    def send(self, data):
        self.sent.append(data)

    def frames(self):
        return [json.loads(d) for d in self.sent]


def update(delta, index=0, kind="text_delta", message_text="whole message so far"):
    message = {"role": "assistant", "content": [{"type": "text", "text": message_text}]}
    return {
        "type": "message_update",
        "message": message,
        "assistantMessageEvent": {
            "type": kind,
            "contentIndex": index,
            "delta": delta,
            "partial": message,
        },
    }


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def stream(tmp_path, clock):
    journal = Journal(tmp_path / "journal", clock, JournalLimits())
    journal.open()
    return EventStream("s1", journal, clock, merge_window=0.03)


def publish(stream, payload):
    return stream.publish(payload["type"], payload, json.dumps(payload).encode())


def test_same_bytes_to_every_full_connection(stream):
    a, b = FakeConnection("a"), FakeConnection("b")
    stream.attach(a, "full")
    stream.attach(b, "full")
    assert publish(stream, {"type": "agent_start"}) == 1
    assert publish(stream, update("Hi")) == 2
    assert a.sent == b.sent and a.sent[0] is b.sent[0]
    frames = a.frames()
    assert [f["seq"] for f in frames] == [1, 2]
    assert frames[1]["payload"]["message"]["content"][0]["text"] == "whole message so far"


def test_delta_mode_strips_and_merges_within_the_window(stream, clock):
    phone = FakeConnection("phone")
    stream.attach(phone, "delta")
    publish(stream, {"type": "agent_start"})
    publish(stream, update("Hel"))
    publish(stream, update("lo "))
    assert len(phone.sent) == 1  # the deltas wait for the window
    clock.advance(0.03)
    publish(stream, update("world"))
    publish(stream, update("!", kind="thinking_delta"))  # another block: flushes
    publish(stream, {"type": "message_end", "message": {"role": "assistant"}})
    frames = phone.frames()
    assert [f["seq"] for f in frames] == [1, 3, 4, 5, 6]
    merged = frames[1]["payload"]
    assert merged == {
        "type": "message_update",
        "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": "Hello "},
    }
    assert frames[2]["payload"]["assistantMessageEvent"]["delta"] == "world"
    assert "message" not in frames[3]["payload"]
    assert frames[4]["type"] == "message_end"


def test_no_merging_with_a_zero_window(tmp_path, clock):
    journal = Journal(tmp_path / "j", clock)
    journal.open()
    stream = EventStream("s1", journal, clock, merge_window=0)
    phone = FakeConnection("phone")
    stream.attach(phone, "delta")
    publish(stream, update("a"))
    publish(stream, update("b"))
    assert [f["seq"] for f in phone.frames()] == [1, 2]


def test_attach_replays_after_last_seq(stream):
    for text in ("a", "b", "c"):
        publish(stream, update(text))
    late = FakeConnection("late")
    assert stream.attach(late, "full", last_seq=1) is None
    assert [f["seq"] for f in late.frames()] == [2, 3]
    assert late.frames()[0]["payload"]["message"]["content"][0]["text"] == "whole message so far"
    publish(stream, update("d"))
    assert [f["seq"] for f in late.frames()] == [2, 3, 4]

    phone = FakeConnection("phone")
    assert stream.attach(phone, "delta", last_seq=0) is None
    (merged,) = phone.frames()  # a replay merges runs of deltas too
    assert merged["seq"] == 4
    assert merged["payload"]["assistantMessageEvent"]["delta"] == "abcd"


def test_attach_flushes_pending_deltas_first(stream):
    phone = FakeConnection("phone")
    stream.attach(phone, "delta")
    publish(stream, update("x"))
    other = FakeConnection("other")
    stream.attach(other, "delta", last_seq=0)
    assert [f["seq"] for f in phone.frames()] == [1]
    assert [f["seq"] for f in other.frames()] == [1]
    publish(stream, update("y"))
    stream.flush()
    assert [f["seq"] for f in other.frames()] == [1, 2]


def test_gap_or_unknown_seq_asks_for_a_snapshot(tmp_path, clock):
    journal = Journal(tmp_path / "j", clock, JournalLimits(max_events=4, segment_events=2))
    journal.open()
    stream = EventStream("s1", journal, clock)
    for text in "abcdefgh":
        publish(stream, {"type": "note", "text": text})
    late = FakeConnection("late")
    assert stream.attach(late, "full", last_seq=1) == "journal_trimmed"
    assert stream.attach(late, "full", last_seq=99) == "unknown_seq"
    assert late.sent == []
    assert stream.attach(late, "full", last_seq=8) is None  # up to date: nothing to replay


def test_a_huge_full_replay_becomes_a_snapshot(tmp_path, clock):
    journal = Journal(tmp_path / "j", clock)
    journal.open()
    stream = EventStream("s1", journal, clock, max_replay_bytes=2000)
    for n in range(20):
        publish(stream, update("x", message_text="y" * 50 * n))
    phone, desktop = FakeConnection("phone"), FakeConnection("desktop")
    assert stream.attach(desktop, "full", last_seq=0) == "replay_too_large"
    assert desktop.sent == []
    # The same events in delta mode are small: replayed.
    assert stream.attach(phone, "delta", last_seq=0) is None
    assert phone.frames()[-1]["seq"] == 20


def test_hold_and_release_around_a_snapshot(stream):
    publish(stream, update("a"))
    late = FakeConnection("late")
    stream.hold(late, "full")
    publish(stream, update("b"))  # reflected in the snapshot
    snapshot_seq = stream.seq
    publish(stream, update("c", message_text="abc"))  # after it
    assert late.sent == []
    stream.release(late, {"type": "session_snapshot", "messages": []}, snapshot_seq)
    frames = late.frames()
    assert [(f["type"], f["seq"]) for f in frames] == [
        ("session_snapshot", 2),
        ("message_update", 3),
    ]


def test_streaming_message_follows_the_answer(stream):
    publish(
        stream,
        {"type": "message_start", "message": {"role": "assistant", "content": [], "model": "m"}},
    )
    for event in (
        {"type": "text_start", "contentIndex": 0},
        {"type": "text_delta", "contentIndex": 0, "delta": "a"},
        {"type": "text_delta", "contentIndex": 0, "delta": "b"},
    ):
        publish(
            stream,
            {"type": "message_update", "usage": {"output": 2}, "assistantMessageEvent": event},
        )
    assert stream.streaming_message == {
        "role": "assistant",
        "model": "m",
        "usage": {"output": 2},
        "content": [{"type": "text", "text": "ab"}],
    }
    publish(stream, {"type": "message_end", "message": {}})
    assert stream.streaming_message is None


def test_delta_mode_leaves_out_the_usage_of_every_update(stream, clock):
    phone = FakeConnection("phone")
    stream.attach(phone, "delta")
    publish(
        stream,
        {
            "type": "message_update",
            "usage": {"input": 1, "output": 1},
            "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": "x"},
        },
    )
    clock.advance(1)
    [frame] = phone.frames()
    assert "usage" not in frame["payload"]
    assert frame["payload"]["assistantMessageEvent"]["delta"] == "x"


def test_seq_continues_from_the_journal(tmp_path, clock):
    journal = Journal(tmp_path / "j", clock)
    journal.open()
    first = EventStream("s1", journal, clock)
    publish(first, {"type": "a"})
    publish(first, {"type": "b"})
    first.close()
    reopened = Journal(tmp_path / "j", clock)
    reopened.open()
    assert EventStream("s1", reopened, clock).seq == 2


def test_a_failing_journal_does_not_stop_the_stream():
    class Broken:
        last_seq = 0

        def append(self, *args):
            raise OSError("disk full")

    broken = EventStream("s1", Broken(), Clock())
    live = FakeConnection("live")
    broken.attach(live, "full")
    publish(broken, {"type": "agent_start"})
    assert [f["seq"] for f in live.frames()] == [1]


def delta_update(text):
    return {
        "type": "message_update",
        "usage": {"output": 1},
        "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": text},
    }


def test_a_client_without_snapshots_gets_a_long_gap_compacted(stream, monkeypatch):
    import piserver.sessions.stream

    monkeypatch.setattr(piserver.sessions.stream, "MAX_FULL_REPLAY_EVENTS", 10)
    monkeypatch.setattr(piserver.sessions.stream, "MAX_MERGED_DELTA_CHARS", 12)
    publish(stream, {"type": "agent_start"})
    for index in range(30):
        publish(stream, delta_update(f"w{index:02d} "))
    publish(stream, {"type": "message_end", "message": {"role": "assistant"}})
    reader = FakeConnection("seed")
    # A client that reads snapshots would get one.
    assert stream.attach(FakeConnection("web"), "full", 1) == "replay_too_large"

    assert stream.attach(reader, "full", 1, snapshots=False) is None

    frames = reader.frames()
    updates = [f for f in frames if f["type"] == "message_update"]
    text = "".join(f["payload"]["assistantMessageEvent"]["delta"] for f in updates)
    assert text == "".join(f"w{index:02d} " for index in range(30))
    # Merged, three 4-character pieces at a time: no frame's text goes past the cap.
    assert [len(f["payload"]["assistantMessageEvent"]["delta"]) for f in updates] == [12] * 10
    assert [f["seq"] for f in frames] == sorted({f["seq"] for f in frames})
    assert frames[-1]["type"] == "message_end" and frames[-1]["seq"] == stream.seq


def test_a_client_without_snapshots_resumes_past_a_trim_or_an_unknown_seq(tmp_path, clock):
    journal = Journal(tmp_path / "j", clock, JournalLimits(max_events=5, segment_events=5))
    journal.open()
    stream = EventStream("s1", journal, clock)
    for index in range(20):
        publish(stream, {"type": f"e{index}"})
    trimmed = FakeConnection("a")
    assert stream.attach(trimmed, "full", 1, snapshots=False) is None
    seqs = [f["seq"] for f in trimmed.frames()]
    assert seqs[-1] == 20 and seqs == list(range(seqs[0], 21)) and seqs[0] > 2
    ahead = FakeConnection("b")
    assert stream.attach(ahead, "full", 999, snapshots=False) is None
    assert ahead.sent == []
    publish(stream, {"type": "live"})
    assert [f["type"] for f in ahead.frames()] == ["live"]


def test_pi_bytes_pass_through_with_only_the_added_fields_appended(stream):
    # pi's own spelling (spaces, 1.0) shows the bytes were not decoded and encoded again.
    full, phone = FakeConnection("full"), FakeConnection("phone")
    stream.attach(full, "full")
    stream.attach(phone, "delta")
    start = b'{"type": "message_start", "message": {"role": "user", "weight": 1.0}}'
    stream.publish("message_start", json.loads(start), start)
    end = b'{"type":"agent_end","messages":[{"role":"assistant","stopReason":"stop"}]}'
    stream.publish("agent_end", json.loads(end), end)
    for connection in (full, phone):
        assert connection.sent[0].endswith(b',"payload":' + start + b"}")
        assert connection.sent[1].endswith(b',"payload":' + end[:-1] + b',"success":true}}')
    assert stream._journal.replay(0)[1][2] == end[:-1] + b',"success":true}'


def test_an_enrichment_that_changes_a_field_is_encoded_again(stream):
    full = FakeConnection("full")
    stream.attach(full, "full")
    publish(stream, {"type": "message_start", "message": {"role": "assistant", "content": []}})
    call = {
        "type": "message_update",
        "assistantMessageEvent": {
            "type": "toolcall_start",
            "contentIndex": 0,
            "id": "c1",
            "toolName": "bash",
        },
    }
    raw = json.dumps(call, indent=1).encode()
    stream.publish("message_update", call, raw)
    payload = full.frames()[1]["payload"]
    assert payload["assistantMessageEvent"]["partial"]["content"][0]["name"] == "bash"
    assert raw not in full.sent[1]
