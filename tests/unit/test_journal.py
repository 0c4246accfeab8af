"""The session event journal: compact storage, exact replay, retention, crash recovery."""

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger

from piserver.sessions import journal as journal_module
from piserver.sessions.journal import (
    Journal,
    JournalGap,
    JournalLimits,
    JournalStopped,
)
from piserver.sessions.journalcodec import strip_message_update
from tests.support import events


def same_json(left: bytes, right: bytes) -> bool:
    """Equal JSON with the same key order and the same types (``1`` is not ``1.0``)."""
    return json.dumps(json.loads(left)) == json.dumps(json.loads(right))


def recorded(name):
    return [(json.loads(line)["type"], json.loads(line), line) for line in events.load(name)]


def synthetic(first, last):
    """Synthetic pi-like events ``first..last`` as ``(type, payload, JSON)``."""
    found = []
    for seq in range(first, last + 1):
        event_type, payload = events.synthetic_event(seq)
        found.append((event_type, payload, events.encode(payload)))
    return found


def delta_form(event_type, payload, payload_json):
    if event_type == "message_update":
        return events.encode(strip_message_update(payload))
    return payload_json


class LogEvents(list):
    """A Logger whose events are kept here."""

    def __init__(self):
        super().__init__()
        self.logger = Logger(observer=self.append)

    def at(self, level):
        return [event for event in self if event["log_level"].name == level]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def logs():
    return LogEvents()


@pytest.fixture
def directory(tmp_path):
    return tmp_path / "sessions" / "s1" / "journal"


@pytest.fixture
def make_journal(directory, clock, logs):
    opened = []

    def make(**limits):
        journal = Journal(directory, clock, JournalLimits(**limits), log=logs.logger)
        journal.open()
        opened.append(journal)
        return journal

    yield make
    for journal in opened:
        journal.close()


def append_all(journal, stream, first_seq=None):
    seq = journal.last_seq + 1 if first_seq is None else first_seq
    for event_type, payload, payload_json in stream:
        journal.append(seq, event_type, payload, payload_json)
        seq += 1


def assert_replays(journal, stream, after_seq=0, first_seq=1):
    """``journal.replay(after_seq)`` in both modes gives ``stream`` (which starts at
    ``first_seq``) from ``after_seq + 1`` on."""
    expected = list(enumerate(stream, first_seq))[after_seq + 1 - first_seq :]
    full = journal.replay(after_seq)
    delta = journal.replay(after_seq, "delta")
    assert [seq for seq, _, _ in full] == [seq for seq, _ in expected]
    assert [seq for seq, _, _ in delta] == [seq for seq, _ in expected]
    for (seq, (event_type, payload, payload_json)), full_event, delta_event in zip(
        expected, full, delta, strict=True
    ):
        assert full_event[1] == delta_event[1] == event_type
        assert same_json(full_event[2], payload_json), seq
        assert same_json(delta_event[2], delta_form(event_type, payload, payload_json)), seq


def segment_files(directory):
    return sorted(path.name for path in directory.iterdir() if path.suffix == ".jrnl")


# -- basics ---------------------------------------------------------------


def test_an_empty_journal_replays_nothing(make_journal, directory):
    journal = make_journal()

    assert journal.first_seq is None
    assert journal.last_seq == 0
    assert journal.disk_bytes == 0
    assert journal.replay(0) == []
    assert journal.replay(7, "delta") == []
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("name", events.RECORDED)
def test_recorded_pi_streams_replay_exactly(make_journal, directory, name):
    stream = recorded(name)
    journal = make_journal()

    append_all(journal, stream)

    assert (journal.first_seq, journal.last_seq) == (1, len(stream))
    assert_replays(journal, stream)
    full = journal.replay(0)
    for (event_type, _, payload_json), (_, _, replayed) in zip(stream, full, strict=True):
        if event_type != "message_update":
            assert replayed == payload_json  # stored verbatim: byte for byte
    files = segment_files(directory)
    assert files == ["00000000000000000001.jrnl"]
    assert stat.S_IMODE((directory / files[0]).stat().st_mode) == 0o600


@pytest.mark.parametrize("name", events.RECORDED)
def test_delta_mode_drops_the_usage_of_every_update(make_journal, name):
    stream = recorded(name)
    journal = make_journal()
    append_all(journal, stream)

    delta = journal.replay(0, "delta")

    updates = [
        json.loads(payload) for _, event_type, payload in delta if event_type == "message_update"
    ]
    assert updates
    assert all("usage" not in update for update in updates)
    assert (
        sum(len(payload) for _, event_type, payload in delta if event_type == "message_update")
        < sum(len(line) for event_type, _, line in stream if event_type == "message_update") / 2
    )


def test_message_updates_take_little_more_disk_than_pi_wrote(make_journal):
    stream = synthetic(1, events.ANSWER_LENGTH * 5)
    journal = make_journal()

    append_all(journal, stream)

    full_size = sum(len(payload_json) for _, _, payload_json in stream)
    delta_size = sum(len(delta_form(*event)) for event in stream)
    # pi 1.x's updates are kept as pi wrote them (journaling one encodes nothing): little
    # more than pi's own bytes, and delta-mode replay leaves their usage out.
    assert delta_size < full_size < journal.disk_bytes < full_size * 1.5
    updates = [
        json.loads(payload)
        for _, event_type, payload in journal.replay(0, "delta")
        if event_type == "message_update"
    ]
    assert updates and all("usage" not in update for update in updates)


def test_strip_message_update_leaves_the_event_alone():
    _, payload = events.synthetic_event(5)
    before = json.dumps(payload)

    stripped = strip_message_update(payload)

    assert json.dumps(payload) == before
    assert list(payload) == ["type", "usage", "assistantMessageEvent"]
    assert list(stripped) == ["type", "assistantMessageEvent"]
    assert stripped["assistantMessageEvent"] == {
        "type": "text_delta",
        "contentIndex": 0,
        "delta": "w0.3 ",
    }
    bare = {"type": "message_update"}
    assert strip_message_update(bare) == bare
    assert strip_message_update(bare) is not bare


def test_seq_must_follow_the_last_one(make_journal):
    journal = make_journal()
    (event,) = synthetic(1, 1)

    with pytest.raises(ValueError, match="expects seq 1, not 2"):
        journal.append(2, *event)
    journal.append(1, *event)
    with pytest.raises(ValueError, match="expects seq 2, not 1"):
        journal.append(1, *event)
    with pytest.raises(ValueError, match="expects seq 2, not 3"):
        journal.append(3, *event)

    assert journal.last_seq == 1
    assert len(journal.replay(0)) == 1


def test_replay_after_a_seq_gives_only_the_later_events(make_journal):
    stream = synthetic(1, 100)
    journal = make_journal()
    append_all(journal, stream)

    for after_seq in (0, 1, 5, 39, 40, 41, 63, 99):
        assert_replays(journal, stream, after_seq)
    assert journal.replay(100) == []
    assert journal.replay(1000, "delta") == []


def test_replay_checks_its_arguments(make_journal):
    journal = make_journal()
    append_all(journal, synthetic(1, 3))

    with pytest.raises(ValueError, match="mode"):
        journal.replay(0, "compressed")
    with pytest.raises(ValueError, match="after_seq"):
        journal.replay(-1)


def test_a_closed_journal_refuses_work(directory, clock):
    journal = Journal(directory, clock, JournalLimits())
    with pytest.raises(RuntimeError, match="not open"):
        journal.replay(0)
    journal.open()
    with pytest.raises(RuntimeError, match="already open"):
        journal.open()
    journal.close()

    with pytest.raises(RuntimeError, match="not open"):
        journal.append(1, *synthetic(1, 1)[0])


# -- unusual message updates ----------------------------------------------


def update(message=None, partial=None, **extra):
    inner = {"type": "text_delta", "contentIndex": 0, "delta": "x"}
    if partial is not None:
        inner["partial"] = partial
    payload = {"type": "message_update", "assistantMessageEvent": inner, **extra}
    if message is not None:
        payload["message"] = message
    return "message_update", payload, events.encode(payload)


def test_odd_message_updates_replay_exactly(make_journal):
    base = {"role": "assistant", "content": [{"type": "text", "text": "ab"}], "n": 1}
    stream = [
        update(base, json.loads(json.dumps(base))),
        # partial differs from message
        update({**base, "n": 2}, {**base, "n": 3}),
        # only a partial, then only a message
        update(None, {**base, "content": []}),
        update({**base, "content": [{"type": "text", "text": "abc"}]}),
        # neither: stored as it is
        update(),
        # 1 becomes 1.0, then true; a key disappears and comes back elsewhere
        update({**base, "n": 1.0}),
        update({**base, "n": True}),
        update({"n": True, "role": "assistant", "content": base["content"]}),
        # message not an object; an assistantMessageEvent that is not an object
        update("plain text"),
        (
            "message_update",
            {"type": "message_update", "assistantMessageEvent": [1], "message": {"a": "\ud800"}},
            b'{"type":"message_update","assistantMessageEvent":[1],"message":{"a":"\\ud800"}}',
        ),
        # text that cannot be encoded once for both copies
        update({"a": "\ud800"}, {"a": "\ud800"}),
        update(base, base, note="\x00pi-journal:shared message\x00"),
        # message first in the key order, partial first in its object
        (
            "message_update",
            {
                "message": base,
                "type": "message_update",
                "assistantMessageEvent": {"partial": base, "type": "text_end"},
            },
            events.encode(
                {
                    "message": base,
                    "type": "message_update",
                    "assistantMessageEvent": {"partial": base, "type": "text_end"},
                }
            ),
        ),
    ]
    journal = make_journal()

    append_all(journal, stream)

    assert_replays(journal, stream)
    assert journal.replay(4)[0][2] == stream[4][2]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from("abcde"), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=6), st.booleans())
def test_any_sequence_of_messages_replays_exactly(messages, grow_text):
    if grow_text:
        messages = [
            {"content": [{"text": "x" * index}], "m": message}
            for index, message in enumerate(messages)
        ]
    stream = [update(message, message) for message in messages]
    with tempfile.TemporaryDirectory() as root:
        journal = Journal(Path(root), Clock(), JournalLimits(segment_events=4))
        journal.open()
        append_all(journal, stream)

        assert_replays(journal, stream)
        journal.close()


# -- segments and retention -----------------------------------------------


def test_segments_rotate_by_event_count_and_decode_on_their_own(
    make_journal, directory, tmp_path, clock
):
    stream = synthetic(1, 100)
    journal = make_journal(segment_events=15)

    append_all(journal, stream)

    files = segment_files(directory)
    assert files == [f"{first:020d}.jrnl" for first in range(1, 100, 15)]
    assert_replays(journal, stream, after_seq=50)
    # A segment alone: its first message update holds the whole message.
    alone = tmp_path / "alone"
    alone.mkdir()
    os.link(directory / files[3], alone / files[3])
    lonely = Journal(alone, clock, JournalLimits())
    lonely.open()
    assert (lonely.first_seq, lonely.last_seq) == (46, 60)
    assert_replays(lonely, stream[45:60], after_seq=45, first_seq=46)
    lonely.close()


def test_segments_rotate_by_size(make_journal, directory):
    stream = synthetic(1, 120)
    journal = make_journal(segment_bytes=2000)

    append_all(journal, stream)

    sizes = [(directory / name).stat().st_size for name in segment_files(directory)]
    assert len(sizes) > 3
    assert all(size < 2000 + 2000 for size in sizes)
    assert sum(sizes) == journal.disk_bytes
    assert_replays(journal, stream)


def test_retention_by_count_trims_old_segments(make_journal, directory):
    stream = synthetic(1, 100)
    journal = make_journal(max_events=30, segment_events=10)

    append_all(journal, stream)

    assert (journal.first_seq, journal.last_seq) == (71, 100)
    assert segment_files(directory) == [f"{first:020d}.jrnl" for first in (71, 81, 91)]
    with pytest.raises(JournalGap) as gap:
        journal.replay(0)
    assert (gap.value.after_seq, gap.value.first_seq, gap.value.last_seq) == (0, 71, 100)
    with pytest.raises(JournalGap):
        journal.replay(69, "delta")
    assert_replays(journal, stream[70:], after_seq=70, first_seq=71)


def test_retention_by_bytes_trims_old_segments(make_journal, directory):
    stream = synthetic(1, 200)
    journal = make_journal(max_bytes=6000, segment_bytes=1500)

    append_all(journal, stream)

    assert journal.disk_bytes <= 6000
    assert journal.disk_bytes == sum(
        (directory / name).stat().st_size for name in segment_files(directory)
    )
    first = journal.first_seq
    assert first > 1
    with pytest.raises(JournalGap):
        journal.replay(first - 2)
    assert_replays(journal, stream[first - 1 :], after_seq=first - 1, first_seq=first)


def test_retention_by_age_trims_old_segments(make_journal, clock):
    stream = synthetic(1, 30)
    journal = make_journal(max_age=60, segment_events=10)
    append_all(journal, stream[:20])
    clock.advance(30)
    append_all(journal, stream[20:25])
    assert journal.first_seq == 1

    clock.advance(31)
    append_all(journal, stream[25:26])

    assert journal.first_seq == 21
    with pytest.raises(JournalGap):
        journal.replay(10)
    assert_replays(journal, stream[20:26], after_seq=20, first_seq=21)


def test_the_segment_being_written_is_never_trimmed(make_journal, clock):
    stream = synthetic(1, 30)
    journal = make_journal(max_age=60, max_events=5, max_bytes=100)

    append_all(journal, stream[:20])
    clock.advance(1000)
    append_all(journal, stream[20:])

    assert (journal.first_seq, journal.last_seq) == (1, 30)
    assert_replays(journal, stream)


def test_retention_applies_on_open(make_journal, directory, clock):
    stream = synthetic(1, 30)
    journal = make_journal(max_age=60, segment_events=10)
    append_all(journal, stream)
    journal.close()
    clock.advance(61)

    reopened = make_journal(max_age=60, segment_events=10)

    assert (reopened.first_seq, reopened.last_seq) == (21, 30)
    assert segment_files(directory) == [f"{21:020d}.jrnl"]


# -- restarts and crashes ---------------------------------------------------


def test_reopening_continues_the_seqs_mid_answer(make_journal, directory):
    stream = synthetic(1, 90)
    journal = make_journal()
    append_all(journal, stream[:50])
    journal.close()

    reopened = make_journal()
    assert (reopened.first_seq, reopened.last_seq) == (1, 50)
    with pytest.raises(ValueError):
        reopened.append(1, *stream[0])
    append_all(reopened, stream[50:])

    assert segment_files(directory) == [f"{1:020d}.jrnl", f"{51:020d}.jrnl"]
    assert_replays(reopened, stream)
    assert_replays(reopened, stream, after_seq=45)


def last_segment(directory):
    return directory / segment_files(directory)[-1]


def test_a_truncated_last_record_is_dropped(make_journal, directory, logs):
    stream = synthetic(1, 12)
    journal = make_journal()
    append_all(journal, stream[:11])
    journal.close()
    path = last_segment(directory)
    whole = path.stat().st_size
    os.truncate(path, whole - 5)

    reopened = make_journal()

    assert reopened.last_seq == 10
    assert path.stat().st_size < whole - 5
    assert reopened.disk_bytes == path.stat().st_size
    assert any("truncated record" in event["problem"] for event in logs.at("warn"))
    append_all(reopened, stream[10:])
    assert_replays(reopened, stream)


def test_garbage_after_the_last_record_is_dropped(make_journal, directory, logs):
    stream = synthetic(1, 20)
    journal = make_journal()
    append_all(journal, stream[:10])
    journal.close()
    path = last_segment(directory)
    size = path.stat().st_size
    with open(path, "ab") as segment:
        segment.write(b"\x00\x01garbage" * 30)

    reopened = make_journal()

    assert reopened.last_seq == 10
    assert path.stat().st_size == size
    assert logs.at("warn")
    append_all(reopened, stream[10:])
    assert_replays(reopened, stream)


@pytest.mark.parametrize("content", [b"", b"pijr", b"pijrnl\x00\x01"])
def test_a_last_segment_without_a_record_is_removed(make_journal, directory, logs, content):
    stream = synthetic(1, 10)
    journal = make_journal()
    append_all(journal, stream[:5])
    journal.close()
    (directory / f"{6:020d}.jrnl").write_bytes(content)

    reopened = make_journal()

    assert (reopened.first_seq, reopened.last_seq) == (1, 5)
    assert segment_files(directory) == [f"{1:020d}.jrnl"]
    assert "no complete record" in logs.at("warn")[0]["log_format"]
    append_all(reopened, stream[5:])
    assert_replays(reopened, stream)


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_corrupt_middle_segment_is_moved_aside(make_journal, directory, logs):
    stream = synthetic(1, 40)
    journal = make_journal(segment_events=10)
    append_all(journal, stream[:35])
    journal.close()
    middle = directory / f"{11:020d}.jrnl"
    flip_byte(middle, middle.stat().st_size // 2)

    reopened = make_journal(segment_events=10)

    assert not middle.exists()
    assert (directory / f"{11:020d}.jrnl.corrupt-1").exists()
    (critical,) = logs.at("critical")
    assert "checksum" in critical["reason"]
    # Segment 1 cannot be replayed across the hole: forgotten; 21 and 31 load.
    assert segment_files(directory) == [f"{21:020d}.jrnl", f"{31:020d}.jrnl"]
    assert (reopened.first_seq, reopened.last_seq) == (21, 35)
    with pytest.raises(JournalGap):
        reopened.replay(5)
    append_all(reopened, stream[35:])
    assert_replays(reopened, stream[20:], after_seq=20, first_seq=21)


def test_segments_before_a_hole_are_forgotten(make_journal, directory, logs):
    stream = synthetic(1, 40)
    journal = make_journal(segment_events=10)
    append_all(journal, stream[:30])
    journal.close()
    (directory / f"{11:020d}.jrnl").unlink()

    reopened = make_journal(segment_events=10)

    assert (reopened.first_seq, reopened.last_seq) == (21, 30)
    assert segment_files(directory) == [f"{21:020d}.jrnl"]
    assert any("missing" in event.get("reason", "") for event in logs.at("warn"))
    append_all(reopened, stream[30:])
    assert_replays(reopened, stream[20:], after_seq=20, first_seq=21)


def test_a_last_segment_that_is_not_a_journal_is_moved_aside(make_journal, directory, logs):
    stream = synthetic(1, 25)
    journal = make_journal(segment_events=10)
    append_all(journal, stream[:20])
    journal.close()
    path = directory / f"{11:020d}.jrnl"
    path.write_bytes(b"this is no journal segment")
    (directory / "notes.txt").write_text("not a segment")

    reopened = make_journal(segment_events=10)

    assert (directory / f"{11:020d}.jrnl.corrupt-1").exists()
    assert logs.at("critical")
    # Seq 11 at least was sent: numbering goes on after it, and nothing before the lost
    # events can be replayed across them.
    assert (reopened.first_seq, reopened.last_seq) == (None, 11)
    with pytest.raises(JournalGap):
        reopened.replay(5)
    append_all(reopened, stream[11:])
    assert_replays(reopened, stream[11:], after_seq=11, first_seq=12)


def test_a_corrupt_record_found_while_replaying_is_a_gap(make_journal, directory, logs):
    journal = make_journal()
    append_all(journal, synthetic(1, 10))
    flip_byte(last_segment(directory), 200)

    with pytest.raises(JournalGap) as gap:
        journal.replay(0)

    assert gap.value.reason == "unreadable segment"
    assert logs.at("critical")


class FailingWrites:
    """os.write failing (or writing half) for the next journal write only."""

    def __init__(self, monkeypatch, short=False):
        self._write = os.write
        self._short = short
        monkeypatch.setattr(journal_module.os, "write", self.write)
        self.armed = True

    def write(self, descriptor, data):
        if not self.armed:
            return self._write(descriptor, data)
        if self._short:
            # Half of it fits; writing the rest fails as a full disk does.
            self._short = False
            return self._write(descriptor, data[: len(data) // 2])
        self.armed = False
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("short", [False, True])
def test_a_failed_write_keeps_what_was_written_and_stops_journaling(
    make_journal, directory, monkeypatch, short
):
    stream = synthetic(1, 20)
    journal = make_journal()
    append_all(journal, stream[:10])
    FailingWrites(monkeypatch, short)

    with pytest.raises(JournalStopped):
        journal.append(11, *stream[10])

    assert journal.last_seq == 11 and journal.stopped == "No space left on device"
    # Counted, not written, and no second error: the disk is still full.
    append_all(journal, stream[11:])
    assert journal.last_seq == 20
    # A resume would miss the events not journaled: it gets a gap (a snapshot).
    with pytest.raises(JournalGap):
        journal.replay(5)
    assert journal.replay(20) == []
    journal.close()
    # What was written before is all there.
    reopened = make_journal()
    assert (reopened.first_seq, reopened.last_seq) == (1, 10)
    assert_replays(reopened, stream[:10], after_seq=0, first_seq=1)


# -- replay in a thread -----------------------------------------------------


def in_thread_pool(read):
    """``read()`` in the reactor's thread pool, as the session's stream runs a catch-up."""
    from twisted.internet import reactor, threads

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), read)


@pytest_twisted.ensureDeferred
async def test_replay_in_a_thread_gives_the_same_events(make_journal):
    stream = recorded("text_and_tools")
    journal = make_journal(segment_events=7)
    append_all(journal, stream)

    full = await in_thread_pool(journal.prepared_replay(3))
    delta = await in_thread_pool(journal.prepared_replay(0, "delta"))

    assert full == journal.replay(3)
    assert delta == journal.replay(0, "delta")
    assert await in_thread_pool(journal.prepared_replay(len(stream))) == []


def test_replay_in_a_thread_reports_gaps(make_journal):
    journal = make_journal(max_events=10, segment_events=5)
    append_all(journal, synthetic(1, 30))

    with pytest.raises(JournalGap):
        journal.prepared_replay(0)


def test_an_unreadable_segment_keeps_its_first_seq_used(make_journal, directory):
    journal = make_journal(segment_events=4)
    append_all(journal, synthetic(1, 10))
    journal.close()
    last = sorted(directory.glob("*.jrnl"))[-1]
    first_seq_of_last = int(last.name.split(".")[0])
    last.write_bytes(b"not a journal segment at all")
    reopened = make_journal(segment_events=4)
    assert reopened.last_seq >= first_seq_of_last


def test_continue_after_a_seq_known_elsewhere(make_journal):
    journal = make_journal()
    append_all(journal, synthetic(1, 5))
    journal.continue_after(9)
    assert journal.last_seq == 9
    with pytest.raises(JournalGap):
        journal.replay(3)
    journal.append(10, *synthetic(10, 10)[0])
    assert [seq for seq, _, _ in journal.replay(9)] == [10]
