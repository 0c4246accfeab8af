import json
import os
import signal
import stat
import subprocess
import sys

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel

from piserver.common.files import (
    CorruptFileError,
    load_json,
    loose_mode,
    write_bytes_atomic,
    write_json_atomic,
)
from piserver.sessions import index
from piserver.sessions.index import LoadedState, StateStore


def capturing_logger():
    events = []
    return Logger(observer=events.append), events


def levels(events):
    return [event["log_level"] for event in events]


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def directory_listing(path):
    return sorted(os.listdir(path))


# write_json_atomic / write_bytes_atomic


def test_write_json_atomic_writes_the_value_with_mode_0600(tmp_path):
    path = tmp_path / "data.json"
    write_json_atomic(path, {"b": [1, 2], "a": "é"})
    assert json.loads(path.read_text("utf-8")) == {"b": [1, 2], "a": "é"}
    assert mode_of(path) == 0o600
    assert directory_listing(tmp_path) == ["data.json"]


def test_write_json_atomic_replaces_a_loose_file_with_a_private_one(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    write_json_atomic(str(path), {"new": True})
    assert json.loads(path.read_text()) == {"new": True}
    assert mode_of(path) == 0o600


def test_write_bytes_atomic_honours_an_explicit_mode(tmp_path):
    path = tmp_path / "public"
    write_bytes_atomic(path, b"x", mode=0o644)
    assert path.read_bytes() == b"x"
    assert mode_of(path) == 0o644


def test_failed_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "data.json"
    write_json_atomic(path, {"old": 1})

    def failing_replace(source, destination):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_json_atomic(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1}
    assert directory_listing(tmp_path) == ["data.json"]


def test_failure_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "data.json"
    write_json_atomic(path, {"old": 1})

    def failing_fsync(descriptor):
        raise OSError("no space left")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="no space left"):
        write_json_atomic(path, {"new": "x" * 100_000})
    assert json.loads(path.read_text()) == {"old": 1}
    assert directory_listing(tmp_path) == ["data.json"]


@pytest.mark.parametrize("value", [{"a set": {1, 2}}, {"nan": float("nan")}, {1j: "key"}])
def test_unserialisable_value_changes_nothing(tmp_path, value):
    path = tmp_path / "data.json"
    write_json_atomic(path, {"old": 1})
    with pytest.raises((TypeError, ValueError)):
        write_json_atomic(path, value)
    assert json.loads(path.read_text()) == {"old": 1}
    assert directory_listing(tmp_path) == ["data.json"]


def test_write_fsyncs_the_file_and_then_its_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(descriptor):
        synced.append(stat.S_ISDIR(os.fstat(descriptor).st_mode))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_json_atomic(tmp_path / "data.json", {})
    assert synced == [False, True]


_WRITER = """
import sys
from piserver.common.files import write_json_atomic
path = sys.argv[1]
counter = 0
while True:
    counter += 1
    write_json_atomic(path, {"counter": counter, "padding": "x" * 200_000})
    print(counter, flush=True)
"""


def test_kill_9_during_writes_leaves_a_complete_file(tmp_path):
    path = tmp_path / "state.json"
    for _ in range(5):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3):
            last_reported = int(writer.stdout.readline())
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        document = json.loads(path.read_text())
        assert document["counter"] >= last_reported
        assert len(document["padding"]) == 200_000
        assert mode_of(path) == 0o600


# load_json


def test_load_json_of_a_missing_file_is_none(tmp_path):
    assert load_json(tmp_path / "missing.json") is None


def test_load_json_reads_a_value(tmp_path):
    path = tmp_path / "data.json"
    write_json_atomic(path, {"a": [1]})
    assert load_json(path) == {"a": [1]}


def test_load_json_accepts_another_expected_type(tmp_path):
    path = tmp_path / "data.json"
    write_json_atomic(path, [1, 2])
    assert load_json(path, expected_type=list) == [1, 2]


@pytest.mark.parametrize(
    ("content", "reason_part"),
    [
        (b'{"key": "sk-SECRET-VALUE", ', "not valid JSON at line 1"),
        (b"", "not valid JSON"),
        (b'{"key": "\xff sk-SECRET-VALUE"}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'["sk-SECRET-VALUE"]', "top-level value is a list, not a dict"),
        (b"null", "top-level value is a NoneType, not a dict"),
    ],
)
def test_corrupt_file_is_moved_aside_and_reported(tmp_path, content, reason_part):
    path = tmp_path / "data.json"
    path.write_bytes(content)
    log, events = capturing_logger()
    with pytest.raises(CorruptFileError) as raised:
        load_json(path, log)
    error = raised.value
    moved_to = str(path) + ".corrupt-1"
    assert error.path == str(path)
    assert error.moved_to == moved_to
    assert reason_part in error.reason
    assert "sk-SECRET-VALUE" not in str(error)
    assert not path.exists()
    with open(moved_to, "rb") as moved:
        assert moved.read() == content
    assert levels(events) == [LogLevel.critical]
    assert events[0]["moved_to"] == moved_to


def test_each_corrupt_file_gets_its_own_name(tmp_path):
    path = tmp_path / "data.json"
    for attempt in (b"first", b"second"):
        path.write_bytes(attempt)
        with pytest.raises(CorruptFileError):
            load_json(path, Logger(observer=lambda event: None))
    assert (tmp_path / "data.json.corrupt-1").read_bytes() == b"first"
    assert (tmp_path / "data.json.corrupt-2").read_bytes() == b"second"


def test_read_errors_are_raised_and_leave_the_path_alone(tmp_path):
    path = tmp_path / "data.json"
    path.mkdir()
    with pytest.raises(IsADirectoryError):
        load_json(path)
    assert path.is_dir()
    assert directory_listing(tmp_path) == ["data.json"]


# loose_mode


@pytest.mark.parametrize(("mode", "expected"), [(0o600, None), (0o400, None), (0o640, 0o640)])
def test_loose_mode(tmp_path, mode, expected):
    path = tmp_path / "file"
    path.write_text("x")
    os.chmod(path, mode)
    assert loose_mode(path) == expected
    with open(path, "rb") as opened:
        assert loose_mode(opened.fileno()) == expected


# StateStore


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def state_path(tmp_path):
    return tmp_path / "state.json"


@pytest.fixture
def writes(monkeypatch):
    """Every document StateStore writes, in order."""
    written = []
    real_write = index.write_json_atomic

    def recording_write(path, obj, mode=0o600):
        real_write(path, obj, mode)
        written.append(json.loads(json.dumps(obj)))

    monkeypatch.setattr(index, "write_json_atomic", recording_write)
    return written


def on_disk(path):
    return json.loads(path.read_text())


def record(name, last_activity_at=100):
    return {"mode": "chat", "name": name, "lastActivityAt": last_activity_at}


def loaded_store(state_path, clock, log=None):
    state = StateStore(state_path, clock, log or Logger(observer=lambda event: None))
    state.load()
    return state


def test_missing_state_loads_empty_and_writes_nothing(state_path, clock):
    state = StateStore(state_path, clock)
    assert state.load() == LoadedState(sessions={}, corrupt=None)
    assert state.sessions() == {}
    assert not state_path.exists()


def test_put_writes_at_once(state_path, clock, writes):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))
    assert on_disk(state_path) == {"version": 1, "sessions": {"s1": record("one")}}
    assert mode_of(state_path) == 0o600
    assert len(writes) == 1
    assert clock.getDelayedCalls() == []


def test_remove_writes_at_once(state_path, clock, writes):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))
    state.put("s2", record("two"))
    assert state.remove("s1") is True
    assert on_disk(state_path)["sessions"] == {"s2": record("two")}
    assert len(writes) == 3


def test_remove_of_an_unknown_session_writes_nothing(state_path, clock, writes):
    state = loaded_store(state_path, clock)
    assert state.remove("nope") is False
    assert writes == []


def test_state_survives_a_new_store(state_path, clock):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))
    state.put("s2", record("two"))
    loaded = StateStore(state_path, Clock()).load()
    assert loaded == LoadedState(sessions={"s1": record("one"), "s2": record("two")}, corrupt=None)


def test_records_are_copied_in_and_out(state_path, clock):
    state = loaded_store(state_path, clock)
    original = record("one")
    state.put("s1", original)
    original["name"] = "changed by caller"
    state.get("s1")["name"] = "changed through get"
    state.sessions()["s1"]["name"] = "changed through sessions"
    assert state.get("s1") == record("one")
    assert state.get("missing") is None


def test_many_touches_make_one_write_after_the_delay(state_path, clock, writes):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))
    state.put("s2", record("two"))
    writes.clear()
    for moment in range(1000):
        assert state.touch("s1", 1000 + moment)
    assert state.touch("s2", 5)
    clock.advance(1.9)
    assert writes == []
    assert state.get("s1")["lastActivityAt"] == 1999
    clock.advance(0.1)
    assert len(writes) == 1
    assert on_disk(state_path)["sessions"]["s1"]["lastActivityAt"] == 1999
    assert on_disk(state_path)["sessions"]["s2"]["lastActivityAt"] == 5
    assert clock.getDelayedCalls() == []


def test_touches_after_a_batched_write_schedule_another(state_path, clock, writes):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))
    writes.clear()
    state.touch("s1", 1)
    clock.advance(2)
    state.touch("s1", 2)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2)
    assert [document["sessions"]["s1"]["lastActivityAt"] for document in writes] == [1, 2]


def test_flush_delay_is_configurable(state_path, clock, writes):
    state = StateStore(state_path, clock, flush_delay=10)
    state.load()
    state.put("s1", record("one"))
    state.touch("s1", 7)
    clock.advance(9.9)
    assert len(writes) == 1
    clock.advance(0.1)
    assert len(writes) == 2


def test_touch_of_an_unknown_session_schedules_nothing(state_path, clock):
    state = loaded_store(state_path, clock)
    assert state.touch("nope", 1) is False
    assert clock.getDelayedCalls() == []


def test_a_lifecycle_write_includes_pending_touches_and_cancels_the_batch(
    state_path, clock, writes
):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))
    state.touch("s1", 50)
    state.put("s2", record("two"))
    assert on_disk(state_path)["sessions"]["s1"]["lastActivityAt"] == 50
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert len(writes) == 2


def test_flush_writes_pending_touches_now(state_path, clock, writes):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))
    state.touch("s1", 42)
    state.flush()
    assert on_disk(state_path)["sessions"]["s1"]["lastActivityAt"] == 42
    assert clock.getDelayedCalls() == []
    assert len(writes) == 2


def test_flush_without_changes_writes_nothing(state_path, clock, writes):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))
    state.flush()
    assert len(writes) == 1


def test_failed_put_leaves_memory_and_file_unchanged(state_path, clock, monkeypatch):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))

    def failing_write(path, obj, mode=0o600):
        raise OSError("read-only file system")

    monkeypatch.setattr(index, "write_json_atomic", failing_write)
    with pytest.raises(OSError):
        state.put("s2", record("two"))
    with pytest.raises(OSError):
        state.remove("s1")
    assert state.sessions() == {"s1": record("one")}
    assert on_disk(state_path)["sessions"] == {"s1": record("one")}


def test_failed_batched_write_is_logged_and_retried_by_flush(state_path, clock, monkeypatch):
    log, events = capturing_logger()
    state = loaded_store(state_path, clock, log)
    state.put("s1", record("one"))
    real_write = index.write_json_atomic

    def failing_write(path, obj, mode=0o600):
        raise OSError("disk full")

    monkeypatch.setattr(index, "write_json_atomic", failing_write)
    state.touch("s1", 9)
    clock.advance(2)
    assert levels(events) == [LogLevel.critical]
    assert events[0]["log_failure"].check(OSError)
    monkeypatch.setattr(index, "write_json_atomic", real_write)
    state.flush()
    assert on_disk(state_path)["sessions"]["s1"]["lastActivityAt"] == 9


def test_corrupt_state_is_moved_aside_and_reported(state_path, clock):
    state_path.write_text('{"version": 1, "sessions": {"s1": {"name": "tru')
    log, events = capturing_logger()
    state = StateStore(state_path, clock, log)
    loaded = state.load()
    assert loaded.sessions == {}
    assert isinstance(loaded.corrupt, CorruptFileError)
    assert loaded.corrupt.moved_to == str(state_path) + ".corrupt-1"
    assert LogLevel.critical in levels(events)
    # The store carries on; the corrupt content stays for a human.
    state.put("s2", record("two"))
    assert on_disk(state_path)["sessions"] == {"s2": record("two")}
    assert (state_path.parent / "state.json.corrupt-1").read_text().endswith('"tru')


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"version": 2, "sessions": {}}, "unsupported version 2"),
        ({"sessions": {}}, "no version number"),
        ({"version": 1, "sessions": []}, "no sessions object"),
        ({"version": 1}, "no sessions object"),
    ],
)
def test_state_of_the_wrong_shape_is_moved_aside(state_path, clock, document, reason):
    state_path.write_text(json.dumps(document))
    log, events = capturing_logger()
    loaded = StateStore(state_path, clock, log).load()
    assert loaded.sessions == {}
    assert loaded.corrupt.reason == reason
    assert not state_path.exists()
    assert json.loads((state_path.parent / "state.json.corrupt-1").read_text()) == document
    assert levels(events) == [LogLevel.critical]


def test_entries_that_are_not_objects_are_set_aside_and_the_rest_loads(state_path, clock):
    original = json.dumps(
        {"version": 1, "sessions": {"good": record("one"), "bad": "oops", "worse": [1]}}
    )
    state_path.write_text(original)
    log, events = capturing_logger()
    state = StateStore(state_path, clock, log)
    loaded = state.load()
    assert loaded.sessions == {"good": record("one")}
    assert loaded.corrupt.reason == "entries for sessions bad, worse are not objects"
    assert (state_path.parent / "state.json.corrupt-1").read_text() == original
    assert on_disk(state_path)["sessions"] == {"good": record("one")}
    assert levels(events) == [LogLevel.critical]
    # Rewritten, the file loads cleanly next time.
    assert StateStore(state_path, clock).load().corrupt is None


def test_reload_discards_pending_touches(state_path, clock):
    state = loaded_store(state_path, clock)
    state.put("s1", record("one"))
    state.touch("s1", 77)
    state.load()
    assert clock.getDelayedCalls() == []
    assert state.get("s1") == record("one")
