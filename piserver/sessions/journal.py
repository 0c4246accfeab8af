"""
The on-disk event journal of one session: every event, by seq, for exact resume.

Layout
------
The journal lives in ``<data-dir>/sessions/<id>/journal/`` (mode 0700) as segment
files named after the seq of their first event, ``<first seq, 20 digits>.jrnl``
(0600). A segment is the 8-byte magic ``pijrnl\\0\\1`` followed by records::

    u32 body length | u32 CRC-32 of the body | body
    body = u64 seq | f64 time | u8 kind | u16 type length | event type (UTF-8) | rest

(little-endian; ``time`` is the clock's ``seconds()`` at append, for retention by
age). ``kind`` says what ``rest`` holds:

- 0, verbatim: the event's JSON exactly as it was given (``payload_json``).
- 1, message update: ``u32 n | delta JSON (n bytes) | rebuild JSON``.

Compact message updates
-----------------------
pi 0.x sent every ``message_update`` with the whole message so far, twice
(``message`` and ``assistantMessageEvent.partial``): a 2,000-token answer was
about 30 MB of events for 0.3 MB of news. Such an update is stored as its *delta
form* (the event without those two fields), kept as ready-to-send JSON for
delta-mode replay, plus a *rebuild* JSON ``[message slot, partial slot]``. A slot
is ``null`` when the field is absent, else ``[key position, op]``:

- the ``message`` op is a structural diff against the message of the previous
  message update of the same segment (``null``: unchanged);
- the ``partial`` op is ``null`` when ``partial`` equals that message (what pi
  always sent), else ``[0, value]``.

pi 1.x sends deltas only: its updates are stored verbatim, as pi wrote them, so
that journaling a streamed answer encodes nothing (it is the relay's hot path).
What delta mode leaves out of them, the ``usage`` so far that pi repeats on every
update (see :func:`strip_message_update`), is taken out when a delta-mode replay
reads them.

Diff ops: ``[0, value]`` replaces; ``[1, suffix]`` appends to a string;
``[2, {key: op}, [removed keys]]`` patches an object (new keys last, in order);
``[3, length, [[index, op], ...], [appended items]]`` patches an array. Values
compare strictly (``true`` is not ``1``) and an object whose key order a patch
could not reproduce is replaced whole, so replay gives back equal JSON with the
same key order (not byte-identical: replayed updates are compact JSON). The
first message update of a segment holds the whole message (a keyframe), so
every segment decodes on its own. All other events are stored verbatim and
replayed byte for byte.

Writing
-------
``append`` encodes one record and writes it with a single ``os.write`` on an
``O_APPEND`` descriptor: no buffering in this process, so an event appended
(and then sent to a client) survives a ``kill -9`` of the server. There is no
fsync: after a power cut the CRCs find whatever the disk lost. The caller's
payload dicts are kept (the message of the last update, as the next diff's
base) and must not be mutated after ``append``.

Retention and rotation
----------------------
A segment is closed once it holds ``segment_events`` events or
``segment_bytes`` bytes (so a record never spans segments, a segment may end
one record past that size). Retention deletes whole segments, oldest first,
while the journal holds more than ``max_events`` events or ``max_bytes`` bytes,
or while the oldest segment's newest event is older than ``max_age`` seconds;
it runs on open and after every append, and never deletes the segment being
written. So the limits are upper bounds, except for that one segment.

Recovery (``open``)
-------------------
Every segment is read and checked (magic, framing, CRC, consecutive seqs).
In the last segment a bad record (torn write, garbage) and everything after it
is dropped and the file truncated there. A segment without records is deleted.
Any other bad segment is moved aside (``<name>.corrupt-<n>``) with a critical
log. Replay must be gapless, so segments older than a hole in the seqs are
deleted. ``last_seq`` does not go back below the seqs a moved-aside segment
shows were used (its name, its readable records), so numbering goes on after
them; seqs in its unreadable part may be used again. Appends after an open go
to a new segment: files of a previous run are never written again.

Replay
------
``replay`` reads segments from the one holding ``after_seq + 1``, linearly,
decoding from the segment's start. Full mode returns pi's bytes, and rebuilds
and serialises each pi 0.x update (~15 KB per event of a long answer); delta mode
returns stored bytes, parsing only the updates that carry a ``usage`` to leave it
out.
``replay_in_thread`` does the reading and decoding in the reactor's thread
pool, for long catch-ups.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import attr
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from piserver.common.files import move_aside
from piserver.wire.envelope import encode_payload

_log = Logger()

MIB = 1024 * 1024
DAY = 24 * 3600.0

FULL = "full"
DELTA = "delta"
MODES = (FULL, DELTA)

SEGMENT_SUFFIX = ".jrnl"
_SEGMENT_NAME = re.compile(r"(\d{1,20})\.jrnl\Z")
_MAGIC = b"pijrnl\x00\x01"
_RECORD_HEADER = struct.Struct("<II")
_BODY_HEADER = struct.Struct("<QdBH")
_DELTA_LENGTH = struct.Struct("<I")
_VERBATIM = 0
_UPDATE = 1

_SET, _APPEND, _PATCH_OBJECT, _PATCH_ARRAY = 0, 1, 2, 3
_NO_BASE = object()
"""Diff base before the first message update of a segment: differs from every value."""


def _positive(instance, attribute, value):
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attr.frozen
class JournalLimits:
    """Retention (upper bounds, see the module docstring) and segment rotation sizes."""

    max_events: int = attr.field(default=100_000, validator=_positive)
    max_bytes: int = attr.field(default=128 * MIB, validator=_positive)
    max_age: float = attr.field(default=7 * DAY, validator=_positive)
    """Seconds."""
    segment_bytes: int = attr.field(default=4 * MIB, validator=_positive)
    segment_events: int = attr.field(default=2_000, validator=_positive)


@attr.s(auto_exc=True, str=False)
class JournalGap(Exception):
    """The journal cannot replay every event after ``after_seq``: they were trimmed
    (or lost to corruption). ``first_seq`` is the oldest seq still held, or None."""

    after_seq: int = attr.ib()
    first_seq: int | None = attr.ib()
    last_seq: int = attr.ib()
    reason: str = attr.ib(default="trimmed")

    def __str__(self) -> str:
        return (
            f"journal cannot replay after seq {self.after_seq} ({self.reason}); "
            f"it holds {self.first_seq}..{self.last_seq}"
        )


class JournalStopped(OSError):
    """The journal could not write an event (disk full...) and records no more: what it
    wrote before is kept and replayable; later events are live only."""


class _CorruptRecord(Exception):
    """A segment read for replay does not decode (changed on disk since open)."""


def strip_message_update(payload: dict) -> dict:
    """The delta form of a ``message_update`` event: without ``usage``, ``message`` and
    ``assistantMessageEvent.partial``. A new dict (and a new ``assistantMessageEvent``
    when one was stripped); ``payload`` is not changed."""
    event = _split_update(payload)[0]
    # pi 1.x repeats the usage so far on every update; message_end has the final one.
    event.pop("usage", None)
    return event


def _carries_message(payload: dict) -> bool:
    """Whether an update has the ``message`` or ``partial`` of pi 0.x."""
    if "message" in payload:
        return True
    inner = payload.get("assistantMessageEvent")
    return isinstance(inner, dict) and "partial" in inner


def _split_update(payload: dict):
    """(event without message and partial, message position or None, message, partial
    position or None, partial)."""
    message_at = partial_at = None
    message = partial = None
    if "message" in payload:
        message_at = list(payload).index("message")
        message = payload["message"]
    event = {key: value for key, value in payload.items() if key != "message"}
    inner = payload.get("assistantMessageEvent")
    if isinstance(inner, dict) and "partial" in inner:
        partial_at = list(inner).index("partial")
        partial = inner["partial"]
        event["assistantMessageEvent"] = {
            key: value for key, value in inner.items() if key != "partial"
        }
    return event, message_at, message, partial_at, partial


def _delta_form(event_type: str, payload_json: bytes) -> bytes:
    """A stored update's JSON without the usage delta mode leaves out."""
    if event_type != "message_update" or b'"usage"' not in payload_json:
        return payload_json
    try:
        event = json.loads(payload_json)
    except ValueError as error:
        raise _CorruptRecord(f"undecodable message update: {error!r}") from None
    if not isinstance(event, dict) or "usage" not in event:
        return payload_json
    del event["usage"]
    return encode_payload(event)


_SHARED = "\x00pi-journal:shared message\x00"
_SHARED_JSON = json.dumps(_SHARED)


def _dumps_sharing(event: dict, shared) -> bytes | None:
    """``encode_payload`` of ``event`` whose two :data:`_SHARED` placeholders stand for
    ``shared``, encoding ``shared`` once; None when that cannot be done safely (the
    placeholder's text also occurs in the event, a lone surrogate)."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    if text.count(_SHARED_JSON) != 2:
        return None
    shared_text = json.dumps(shared, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.replace(_SHARED_JSON, shared_text).encode("utf-8")
    except UnicodeEncodeError:
        return None


def _diff(old, new):
    """The op turning ``old`` into ``new``, or None when they are the same JSON."""
    kind = type(new)
    if type(old) is not kind:
        return [_SET, new]
    if kind is dict:
        return _diff_object(old, new)
    if kind is list:
        return _diff_array(old, new)
    if old == new:
        return None
    if kind is str and new.startswith(old):
        return [_APPEND, new[len(old) :]]
    return [_SET, new]


def _diff_object(old: dict, new: dict):
    changes = {}
    kept = 0
    for key, value in new.items():
        if key not in old:
            changes[key] = [_SET, value]
            continue
        kept += 1
        previous = old[key]
        kind = type(value)
        # Inlined fast path for equal scalars: most of a message is unchanged.
        if type(previous) is kind and kind is not dict and kind is not list and previous == value:
            continue
        op = _diff(previous, value)
        if op is not None:
            changes[key] = op
    removed = [key for key in old if key not in new] if kept < len(old) else []
    if list(old) != list(new):
        # A patch keeps the surviving keys in place and appends new ones.
        patched_order = [key for key in old if key in new]
        patched_order.extend(key for key in new if key not in old)
        if patched_order != list(new):
            return [_SET, new]
    if removed:
        return [_PATCH_OBJECT, changes, removed]
    if changes:
        return [_PATCH_OBJECT, changes]
    return None


def _diff_array(old: list, new: list):
    changes = []
    for index in range(min(len(old), len(new))):
        previous, value = old[index], new[index]
        kind = type(value)
        if type(previous) is kind and kind is not dict and kind is not list and previous == value:
            continue
        op = _diff(previous, value)
        if op is not None:
            changes.append([index, op])
    if not changes and len(old) == len(new):
        return None
    return [_PATCH_ARRAY, len(new), changes, new[len(old) :]]


def _patched(base, op):
    """``base`` changed by ``op`` (objects and arrays are changed in place)."""
    tag = op[0]
    if tag == _SET:
        return op[1]
    if tag == _APPEND:
        if not isinstance(base, str):
            raise _CorruptRecord("string append to a non-string")
        return base + op[1]
    if tag == _PATCH_OBJECT:
        if not isinstance(base, dict):
            raise _CorruptRecord("object patch of a non-object")
        for key in op[2] if len(op) > 2 else ():
            del base[key]
        for key, change in op[1].items():
            base[key] = _patched(base.get(key, _NO_BASE), change)
        return base
    if tag == _PATCH_ARRAY:
        if not isinstance(base, list):
            raise _CorruptRecord("array patch of a non-array")
        length, changes, appended = op[1], op[2], op[3]
        del base[length:]
        for index, change in changes:
            base[index] = _patched(base[index], change)
        base.extend(appended)
        return base
    raise _CorruptRecord(f"unknown diff op {tag!r}")


def _inserted(mapping: dict, position: int, key: str, value) -> dict:
    """``mapping`` with ``key`` put back at ``position`` in its key order."""
    if position >= len(mapping):
        mapping[key] = value
        return mapping
    items = list(mapping.items())
    items.insert(position, (key, value))
    return dict(items)


def _record(seq: int, time: float, kind: int, event_type: bytes, rest: bytes) -> bytes:
    head = _BODY_HEADER.pack(seq, time, kind, len(event_type)) + event_type
    # One copy of ``rest`` (an event can be MBs): the CRC of the body is taken in two parts.
    checksum = zlib.crc32(rest, zlib.crc32(head))
    return b"".join((_RECORD_HEADER.pack(len(head) + len(rest), checksum), head, rest))


def _records(data: memoryview, first_seq: int):
    """Yield ``(seq, time, kind, event type, rest, end offset)`` for each record of a
    segment's bytes, in order; raises ``_CorruptRecord`` at the first bad one."""
    if bytes(data[: len(_MAGIC)]) != _MAGIC:
        raise _CorruptRecord("no journal segment header", 0)
    offset = len(_MAGIC)
    expected = first_seq
    while offset < len(data):
        if len(data) - offset < _RECORD_HEADER.size:
            raise _CorruptRecord("truncated record header", offset)
        length, checksum = _RECORD_HEADER.unpack_from(data, offset)
        start = offset + _RECORD_HEADER.size
        end = start + length
        if end > len(data):
            raise _CorruptRecord("truncated record", offset)
        body = data[start:end]
        if length < _BODY_HEADER.size or zlib.crc32(body) != checksum:
            raise _CorruptRecord("record checksum mismatch", offset)
        seq, time, kind, type_length = _BODY_HEADER.unpack_from(body)
        if seq != expected:
            raise _CorruptRecord(f"seq {seq} where {expected} was expected", offset)
        type_end = _BODY_HEADER.size + type_length
        if kind not in (_VERBATIM, _UPDATE) or type_end > length:
            raise _CorruptRecord("malformed record", offset)
        event_type = str(body[_BODY_HEADER.size : type_end], "utf-8", "replace")
        yield seq, time, kind, event_type, body[type_end:], end
        expected += 1
        offset = end


def _decode_segment(data: memoryview, first_seq: int, after_seq: int, mode: str, out: list):
    """Append ``(seq, type, payload JSON)`` for each record after ``after_seq`` to ``out``."""
    base = _NO_BASE
    for seq, _, kind, event_type, rest, _ in _records(data, first_seq):
        if kind == _VERBATIM:
            if seq > after_seq:
                stored = bytes(rest)
                out.append(
                    (seq, event_type, _delta_form(event_type, stored) if mode == DELTA else stored)
                )
            continue
        (delta_length,) = _DELTA_LENGTH.unpack_from(rest)
        delta_start = _DELTA_LENGTH.size
        delta_end = delta_start + delta_length
        if mode == DELTA:
            if seq > after_seq:
                out.append(
                    (seq, event_type, _delta_form(event_type, bytes(rest[delta_start:delta_end])))
                )
            continue
        try:
            message_slot, partial_slot = json.loads(bytes(rest[delta_end:]))
            message = partial = None
            reference = base
            if message_slot is not None:
                if message_slot[1] is not None:
                    base = _patched(base, message_slot[1])
                if base is _NO_BASE:
                    raise _CorruptRecord("message diff without a base")
                message = reference = base
            if partial_slot is not None:
                partial = reference if partial_slot[1] is None else partial_slot[1][1]
                if partial is _NO_BASE:
                    raise _CorruptRecord("partial without a base")
                if message_slot is None:
                    base = partial
            if seq <= after_seq:
                continue
            event = json.loads(bytes(rest[delta_start:delta_end]))
            # pi's two copies of the message are usually one object here: encode it once.
            shared = message_slot is not None and partial is message
            if partial_slot is not None:
                event["assistantMessageEvent"] = _inserted(
                    event["assistantMessageEvent"],
                    partial_slot[0],
                    "partial",
                    _SHARED if shared else partial,
                )
            if message_slot is not None:
                event = _inserted(event, message_slot[0], "message", _SHARED if shared else message)
            encoded = _dumps_sharing(event, message) if shared else encode_payload(event)
            if encoded is None:
                event["message"] = event["assistantMessageEvent"]["partial"] = message
                encoded = encode_payload(event)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            raise _CorruptRecord(f"undecodable message update {seq}: {error!r}") from None
        out.append((seq, event_type, encoded))


def _read_segments(plan, after_seq: int, mode: str) -> list[tuple[int, str, bytes]]:
    """Decode the planned segments (open descriptors, which this closes)."""
    events = []
    try:
        for descriptor, first_seq, size in plan:
            data = _read_exactly(descriptor, size)
            _decode_segment(memoryview(data), first_seq, after_seq, mode, events)
    finally:
        for descriptor, _, _ in plan:
            os.close(descriptor)
    return events


def _read_exactly(descriptor: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(descriptor, size - offset, offset)
        if not chunk:
            raise _CorruptRecord(f"segment shorter than {size} bytes")
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


@attr.define
class _Segment:
    first_seq: int
    path: Path
    last_seq: int
    size: int
    last_time: float


class Journal:
    """
    The journal of one session (see the module docstring for the format).

    ``open`` before use; ``append`` events as they happen; ``replay`` after a
    seq a client has seen. Everything runs on the caller's thread except
    ``replay_in_thread``.
    """

    def __init__(
        self,
        directory: Path,
        clock: IReactorTime,
        limits: JournalLimits | None = None,
        log: Logger | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.limits = limits or JournalLimits()
        self._clock = clock
        self._log = log or _log
        self._segments: list[_Segment] = []
        self._descriptor: int | None = None
        """Write descriptor of the last segment, or None before its first append."""
        self._base = _NO_BASE
        self._last_seq = 0
        self._disk_bytes = 0
        self._open = False
        # Why journaling stopped (a failed write), or None while it records.
        self.stopped: str | None = None

    @property
    def first_seq(self) -> int | None:
        """The oldest seq held, or None when the journal holds no event."""
        return self._segments[0].first_seq if self._segments else None

    @property
    def last_seq(self) -> int:
        """The last seq appended (0 for a journal that never had one)."""
        return self._last_seq

    @property
    def disk_bytes(self) -> int:
        """Bytes of the segments held."""
        return self._disk_bytes

    def open(self) -> None:
        """Create the directory if needed, load and check the segments, recover from
        a crash (see the module docstring) and apply retention."""
        if self._open:
            raise RuntimeError(f"journal {self.directory} is already open")
        _make_private_directory(self.directory)
        self._segments = []
        self._descriptor = None
        self._base = _NO_BASE
        self._last_seq = 0
        found = sorted(
            (int(match.group(1)), entry)
            for entry in self.directory.iterdir()
            if (match := _SEGMENT_NAME.match(entry.name)) and entry.is_file()
        )
        for position, (first_seq, path) in enumerate(found):
            self._load_segment(first_seq, path, last=position == len(found) - 1)
        if self._segments and self._segments[-1].last_seq != self._last_seq:
            self._forget_all(f"seqs up to {self._last_seq} were used in a corrupt segment")
        self._disk_bytes = sum(segment.size for segment in self._segments)
        self._open = True
        self._trim(self._clock.seconds())
        self._log.debug(
            "journal {directory} opened: seqs {first_seq}..{last_seq}, {size} bytes",
            directory=str(self.directory),
            first_seq=self.first_seq,
            last_seq=self._last_seq,
            size=self._disk_bytes,
        )

    def _load_segment(self, first_seq: int, path: Path, last: bool) -> None:
        try:
            data = path.read_bytes()
        except OSError as error:
            # Its name says its first event was numbered (and sent): never number it again.
            self._log.critical(
                "journal segment {path} is unreadable ({error})",
                path=str(path),
                error=error.strerror,
            )
            self._raise_last_seq(first_seq)
            return
        last_seq, last_time, end = first_seq - 1, None, len(_MAGIC)
        problem = None
        try:
            for seq, time, _, _, _, record_end in _records(memoryview(data), first_seq):
                last_seq, last_time, end = seq, time, record_end
        except _CorruptRecord as corrupt:
            problem = corrupt.args[0]
        # Torn or garbled writes can only be at the end of the segment last written.
        torn_tail = problem is not None and last and _MAGIC.startswith(data[: len(_MAGIC)])
        if problem is not None and not torn_tail:
            move_aside(path, f"journal segment: {problem}", self._log)
            # Its first event at least was numbered and sent, whatever could be read of it.
            self._raise_last_seq(max(last_seq, first_seq))
            return
        if last_time is None:
            path.unlink()
            self._log.warn(
                "journal segment {path} had no complete record ({problem}): removed it",
                path=str(path),
                problem=problem or "no record",
            )
            self._raise_last_seq(last_seq)
            return
        if problem is not None:
            os.truncate(path, end)
            self._log.warn(
                "journal segment {path}: {problem} at byte {end}; dropped the last "
                "{dropped} bytes, events up to seq {last_seq} kept",
                path=str(path),
                problem=problem,
                end=end,
                dropped=len(data) - end,
                last_seq=last_seq,
            )
        if self._segments and self._segments[-1].last_seq + 1 != first_seq:
            self._forget_all(f"the seqs before {first_seq} are missing or repeated")
        self._segments.append(_Segment(first_seq, path, last_seq, end, last_time))
        self._raise_last_seq(last_seq)

    def _raise_last_seq(self, seq: int) -> None:
        self._last_seq = max(self._last_seq, seq)

    def _forget_all(self, reason: str) -> None:
        """Delete every segment held: a hole after them makes them unreplayable."""
        for segment in self._segments:
            try:
                segment.path.unlink()
            except FileNotFoundError:
                pass
        if self._segments:
            self._log.warn(
                "journal {directory}: deleted seqs {first_seq}..{last_seq} ({reason})",
                directory=str(self.directory),
                first_seq=self._segments[0].first_seq,
                last_seq=self._segments[-1].last_seq,
                reason=reason,
            )
        self._segments = []
        self._disk_bytes = 0

    def append(self, seq: int, event_type: str, payload: dict, payload_json: bytes) -> None:
        """
        Record one event. ``seq`` must be ``last_seq + 1`` (else ValueError);
        ``payload_json`` must be ``payload`` as JSON. One ``os.write``, no fsync.

        On OSError (disk full...) the event is not journaled but ``last_seq``
        counts it, so numbering goes on; the events written before it are kept, and
        the journal stops: it raises ``JournalStopped`` this once, then counts events
        without writing them (a replay that needs them finds a gap).
        """
        self._require_open()
        if seq != self._last_seq + 1:
            raise ValueError(f"journal expects seq {self._last_seq + 1}, not {seq}")
        if self.stopped is not None:
            self._last_seq = seq
            return
        now = self._clock.seconds()
        current = self._segments[-1] if self._descriptor is not None else None
        if current is not None and (
            current.size >= self.limits.segment_bytes
            or current.last_seq - current.first_seq + 1 >= self.limits.segment_events
        ):
            self._close_descriptor()
            current = None
        # A new segment starts without a base: its first update is a keyframe.
        base = self._base if current is not None else _NO_BASE
        kind, rest = _VERBATIM, payload_json
        # pi 1.x's updates carry neither field: they are kept as they are, unsplit.
        if event_type == "message_update" and _carries_message(payload):
            event, message_at, message, partial_at, partial = _split_update(payload)
            reference = base
            message_slot = partial_slot = None
            if message_at is not None:
                message_slot = [message_at, _diff(reference, message)]
                reference = base = message
            if partial_at is not None:
                same = _diff(reference, partial) is None
                partial_slot = [partial_at, None if same else [_SET, partial]]
                if message_at is None:
                    base = partial
            delta = encode_payload(event)
            kind = _UPDATE
            rebuild = encode_payload([message_slot, partial_slot])
            rest = b"".join((_DELTA_LENGTH.pack(len(delta)), delta, rebuild))
        data = _record(seq, now, kind, event_type.encode("utf-8"), rest)
        try:
            if current is None:
                current = self._start_segment(seq, now)
                data = _MAGIC + data
            written = os.write(self._descriptor, data)
            while written < len(data):
                # A short write: writing the rest says why (ENOSPC...), or succeeds.
                written += os.write(self._descriptor, data[written:])
        except OSError as error:
            self._stop(seq, current, error)
            raise JournalStopped(error.errno, self.stopped) from error
        current.last_seq = seq
        current.size += len(data)
        current.last_time = now
        self._disk_bytes += len(data)
        self._last_seq = seq
        self._base = base
        self._trim(now)

    def _start_segment(self, seq: int, now: float) -> _Segment:
        path = self.directory / f"{seq:020d}{SEGMENT_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        self._descriptor = os.open(path, flags, 0o600)
        segment = _Segment(seq, path, seq - 1, 0, now)
        self._segments.append(segment)
        return segment

    def _stop(self, seq: int, current: _Segment | None, error: OSError) -> None:
        """After a failed write: keep what was written, count ``seq`` as used, write no more."""
        if current is not None and self._descriptor is not None:
            try:
                os.ftruncate(self._descriptor, current.size)
            except OSError:
                pass
        self._close_descriptor()
        if current is not None and current.size == 0:
            # A segment that got not even its header holds nothing.
            self._segments.remove(current)
            current.path.unlink(missing_ok=True)
        self.stopped = error.strerror or str(error)
        self._last_seq = seq
        self._base = _NO_BASE
        self._log.error(
            "journal {directory}: cannot write event {seq} ({reason}); this session's "
            "events are no longer journaled (those up to seq {kept} are kept) until the "
            "server restarts",
            directory=str(self.directory),
            seq=seq,
            reason=self.stopped,
            kept=self._segments[-1].last_seq if self._segments else 0,
        )

    def continue_after(self, seq: int) -> None:
        """Number the next event after ``seq`` at least (the highest seq known elsewhere,
        e.g. the session's record): events up to it were sent, even if this journal lost
        them. The events it holds before such a hole can no longer be replayed."""
        self._require_open()
        if seq <= self._last_seq:
            return
        self._close_descriptor()
        self._forget_all(f"seqs up to {seq} were used, beyond the {self._last_seq} it holds")
        self._last_seq = seq
        self._base = _NO_BASE

    def release_writer(self) -> None:
        """Close the write descriptor (an idle session should not hold one); the next
        append starts a new segment."""
        self._close_descriptor()

    def _trim(self, now: float) -> None:
        limits = self.limits
        while len(self._segments) > 1:
            oldest = self._segments[0]
            if self._last_seq - oldest.first_seq + 1 > limits.max_events:
                reason = "max_events"
            elif self._disk_bytes > limits.max_bytes:
                reason = "max_bytes"
            elif oldest.last_time < now - limits.max_age:
                reason = "max_age"
            else:
                return
            try:
                oldest.path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                self._log.failure("journal {path}: cannot delete it", path=str(oldest.path))
                return
            del self._segments[0]
            self._disk_bytes -= oldest.size
            self._log.debug(
                "journal {directory}: trimmed seqs {first_seq}..{last_seq} ({reason})",
                directory=str(self.directory),
                first_seq=oldest.first_seq,
                last_seq=oldest.last_seq,
                reason=reason,
            )

    def replay(self, after_seq: int, mode: str = FULL) -> list[tuple[int, str, bytes]]:
        """
        Every event with seq > ``after_seq``, in order, as ``(seq, event type,
        payload JSON)``: pi's full events (``mode="full"``) or their delta form
        (``mode="delta"``, see :func:`strip_message_update`). ``[]`` when
        ``after_seq >= last_seq``. Raises :class:`JournalGap` when the journal no
        longer holds ``after_seq + 1``.
        """
        plan = self._plan(after_seq, mode)
        try:
            return _read_segments(plan, after_seq, mode)
        except _CorruptRecord as corrupt:
            raise self._unreadable(after_seq, corrupt) from None

    def prepared_replay(self, after_seq: int, mode: str = FULL):
        """:meth:`replay` in two steps: the segments it needs are opened now (it returns
        the events journaled now, even if trimmed meanwhile), and the returned function
        reads and decodes them when called, from any thread. Raises JournalGap now."""
        plan = self._plan(after_seq, mode)

        def read() -> list[tuple[int, str, bytes]]:
            try:
                return _read_segments(plan, after_seq, mode)
            except _CorruptRecord as corrupt:
                raise self._unreadable(after_seq, corrupt) from None

        return read

    def replay_in_thread(self, reactor, after_seq: int, mode: str = FULL):
        """:meth:`replay` with the reading and decoding done in ``reactor``'s thread
        pool; returns a Deferred firing with the list (or failing with JournalGap).
        Segments trimmed meanwhile are still read: they are opened before it returns."""
        try:
            plan = self._plan(after_seq, mode)
        except (JournalGap, ValueError, RuntimeError) as error:
            return defer.fail(error)
        if not plan:
            return defer.succeed([])

        def unreadable(failure):
            failure.trap(_CorruptRecord)
            raise self._unreadable(after_seq, failure.value)

        return threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), _read_segments, plan, after_seq, mode
        ).addErrback(unreadable)

    def _plan(self, after_seq: int, mode: str) -> list[tuple[int, int, int]]:
        """Open the segments a replay needs: ``[(descriptor, first seq, size)]``."""
        self._require_open()
        if mode not in MODES:
            raise ValueError(f"replay mode must be one of {MODES}, not {mode!r}")
        if after_seq < 0:
            raise ValueError(f"after_seq must be >= 0, not {after_seq}")
        if after_seq >= self._last_seq:
            return []
        first_seq = self.first_seq
        if first_seq is None or after_seq + 1 < first_seq:
            raise JournalGap(after_seq, first_seq, self._last_seq)
        if self.stopped is not None:
            # The events after the last one written were never journaled.
            raise JournalGap(
                after_seq, first_seq, self._last_seq, f"journaling stopped: {self.stopped}"
            )
        start = 0
        for position, segment in enumerate(self._segments):
            if segment.first_seq <= after_seq + 1:
                start = position
        plan = []
        try:
            for segment in self._segments[start:]:
                descriptor = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
                plan.append((descriptor, segment.first_seq, segment.size))
        except OSError as error:
            for descriptor, _, _ in plan:
                os.close(descriptor)
            self._log.failure("journal {directory}: cannot read", directory=str(self.directory))
            raise JournalGap(
                after_seq, first_seq, self._last_seq, f"unreadable: {error.strerror}"
            ) from None
        return plan

    def _unreadable(self, after_seq: int, corrupt: _CorruptRecord) -> JournalGap:
        self._log.critical(
            "journal {directory}: cannot replay after seq {after_seq}: {problem}",
            directory=str(self.directory),
            after_seq=after_seq,
            problem=corrupt.args[0],
        )
        return JournalGap(after_seq, self.first_seq, self._last_seq, "unreadable segment")

    def close(self) -> None:
        """Release the write descriptor; the journal must be opened again to be used."""
        self._close_descriptor()
        self._open = False

    def _close_descriptor(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"journal {self.directory} is not open")


def _make_private_directory(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode 0700."""
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        try:
            candidate.mkdir(mode=0o700)
        except FileExistsError:
            pass
