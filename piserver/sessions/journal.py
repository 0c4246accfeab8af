"""
The on-disk event journal of one session: every event, by seq, for exact resume.

Layout
------
The journal lives in ``<data-dir>/sessions/<id>/journal/`` (mode 0700) as segment
files named after the seq of their first event, ``<first seq, 20 digits>.jrnl``
(0600), each a series of checksummed records; the bytes of a segment and of a record
are :mod:`piserver.sessions.journalcodec`'s job. Events are stored as pi wrote them;
the codec still reads the compact message updates older servers wrote for pi 0.x.

Writing
-------
``append`` encodes one record and writes it with a single ``os.write`` on an
``O_APPEND`` descriptor: no buffering in this process, so an event appended
(and then sent to a client) survives a ``kill -9`` of the server. There is no
fsync: after a power cut the CRCs find whatever the disk lost. The caller's
payload dicts may be kept (as the next diff's base, for a pi 0.x update) and must
not be mutated after ``append``.

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
decoding from the segment's start. Full mode returns pi's bytes; delta mode
leaves out the ``usage`` pi repeats on every update (see
:func:`~piserver.sessions.journalcodec.strip_message_update`).
``prepared_replay`` opens the segments now and reads them later, from any thread:
the session's stream does that in the reactor's thread pool for long catch-ups.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attr
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from piserver.common.files import move_aside
from piserver.sessions import journalcodec as codec
from piserver.sessions.journalcodec import FULL

_log = Logger()

MIB = 1024 * 1024
DAY = 24 * 3600.0

SEGMENT_SUFFIX = ".jrnl"
_SEGMENT_NAME = re.compile(r"(\d{1,20})\.jrnl\Z")


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


def _read_segments(plan, after_seq: int, mode: str) -> list[tuple[int, str, bytes]]:
    """Decode the planned segments (open descriptors, which this closes)."""
    events = []
    try:
        for descriptor, first_seq, size in plan:
            data = _read_exactly(descriptor, size)
            codec.decode_segment(memoryview(data), first_seq, after_seq, mode, events)
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
            raise codec.CorruptRecord(f"segment shorter than {size} bytes")
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
    seq a client has seen. Everything runs on the caller's thread except the
    reading that ``prepared_replay`` returns.
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
        self._base = codec.NO_BASE
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
        self._base = codec.NO_BASE
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
        last_seq, last_time, end = first_seq - 1, None, len(codec.MAGIC)
        problem = None
        try:
            for seq, time, _, _, _, record_end in codec.records(memoryview(data), first_seq):
                last_seq, last_time, end = seq, time, record_end
        except codec.CorruptRecord as corrupt:
            problem = corrupt.args[0]
        # Torn or garbled writes can only be at the end of the segment last written.
        torn_tail = (
            problem is not None and last and codec.MAGIC.startswith(data[: len(codec.MAGIC)])
        )
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
        base = self._base if current is not None else codec.NO_BASE
        kind, rest = codec.VERBATIM, payload_json
        # pi 1.x's updates carry neither field: they are kept as they are, unsplit.
        if event_type == "message_update" and codec.carries_message(payload):
            kind = codec.UPDATE
            rest, base = codec.encode_update(payload, base)
        data = codec.record(seq, now, kind, event_type.encode("utf-8"), rest)
        try:
            if current is None:
                current = self._start_segment(seq, now)
                data = codec.MAGIC + data
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
        self._base = codec.NO_BASE
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
        self._base = codec.NO_BASE

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
        (``mode="delta"``, see journalcodec's ``strip_message_update``). ``[]`` when
        ``after_seq >= last_seq``. Raises :class:`JournalGap` when the journal no
        longer holds ``after_seq + 1``.
        """
        plan = self._plan(after_seq, mode)
        try:
            return _read_segments(plan, after_seq, mode)
        except codec.CorruptRecord as corrupt:
            raise self._unreadable(after_seq, corrupt) from None

    def prepared_replay(self, after_seq: int, mode: str = FULL):
        """:meth:`replay` in two steps: the segments it needs are opened now (it returns
        the events journaled now, even if trimmed meanwhile), and the returned function
        reads and decodes them when called, from any thread. Raises JournalGap now."""
        plan = self._plan(after_seq, mode)

        def read() -> list[tuple[int, str, bytes]]:
            try:
                return _read_segments(plan, after_seq, mode)
            except codec.CorruptRecord as corrupt:
                raise self._unreadable(after_seq, corrupt) from None

        return read

    def _plan(self, after_seq: int, mode: str) -> list[tuple[int, int, int]]:
        """Open the segments a replay needs: ``[(descriptor, first seq, size)]``."""
        self._require_open()
        if mode not in codec.MODES:
            raise ValueError(f"replay mode must be one of {codec.MODES}, not {mode!r}")
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

    def _unreadable(self, after_seq: int, corrupt: codec.CorruptRecord) -> JournalGap:
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
