"""
Files that must survive a crash: atomic JSON writes, guarded reads, ``state.json``.

A write goes to a temporary file in the same directory, is flushed and fsynced,
then renamed over the target and the directory fsynced: after a ``kill -9`` or
a power cut the target holds either the old content or the new, never a mix.

A file that cannot be parsed is never replaced by an empty one: it is renamed
to ``<name>.corrupt-<n>`` (kept for a human to inspect), logged at critical
level, and reported to the caller, who carries on with the rest.
"""

import copy
import json
import os
import stat
import tempfile

import attr
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()

STATE_VERSION = 1


@attr.s(auto_exc=True, str=False)
class CorruptFileError(Exception):
    """A JSON file could not be used; it now lives at ``moved_to``."""

    path: str = attr.ib()
    moved_to: str = attr.ib()
    reason: str = attr.ib()

    def __str__(self) -> str:
        return f"{self.path} is corrupt ({self.reason}); moved to {self.moved_to}"


@attr.frozen
class LoadedState:
    """What ``StateStore.load`` found: the sessions, and the corrupt file that
    was moved aside instead of being loaded (None when the file was sound)."""

    sessions: dict[str, dict]
    corrupt: CorruptFileError | None


def loose_mode(file: str | os.PathLike | int) -> int | None:
    """The permission bits of a file (path or descriptor) if group or others have
    any access to it, else None."""
    mode = stat.S_IMODE(os.stat(file).st_mode)
    return mode if mode & 0o077 else None


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; the file gets ``mode``.

    On any failure the old file is untouched and no temporary file is left.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(descriptor, "wb") as temporary_file:
            os.fchmod(temporary_file.fileno(), mode)
            temporary_file.write(data)
            temporary_file.flush()
            os.fsync(temporary_file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def write_json_atomic(path: str | os.PathLike, obj: object, mode: int = 0o600) -> None:
    """Replace ``path`` with ``obj`` as JSON, atomically (see ``write_bytes_atomic``).

    ``obj`` is serialised before anything touches the disk, so a value that
    cannot be written as strict JSON (NaN, a set...) raises and changes nothing.
    """
    data = json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=2, sort_keys=True)
    write_bytes_atomic(path, (data + "\n").encode("utf-8"), mode)


def load_json(
    path: str | os.PathLike, log: Logger | None = None, expected_type: type = dict
) -> object | None:
    """
    The JSON value in ``path``, or None if there is no such file.

    A file that is not UTF-8 JSON, or whose top-level value is not an
    ``expected_type``, is moved aside and ``CorruptFileError`` raised. Errors
    reading the file (permissions...) are raised as ``OSError`` and leave it alone.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as json_file:
            data = json_file.read()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        reason = f"not valid JSON: {type(error).__name__}"
        if isinstance(error, json.JSONDecodeError):
            # Position only: the message could quote content, which may be secret.
            reason = f"not valid JSON at line {error.lineno} column {error.colno}"
        raise move_aside(path, reason, log) from None
    if not isinstance(value, expected_type):
        raise move_aside(
            path,
            f"top-level value is a {type(value).__name__}, not a {expected_type.__name__}",
            log,
        )
    return value


def move_aside(path: str | os.PathLike, reason: str, log: Logger | None = None) -> CorruptFileError:
    """Rename a corrupt file to the first free ``<path>.corrupt-<n>``, log it at
    critical level, and return the error describing it (for the caller to raise)."""
    path = os.fspath(path)
    moved_to = _free_corrupt_path(path)
    os.rename(path, moved_to)
    (log or _log).critical(
        "{path} is corrupt ({reason}): moved it to {moved_to} and carrying on without it",
        path=path,
        reason=reason,
        moved_to=moved_to,
    )
    return CorruptFileError(path=path, moved_to=moved_to, reason=reason)


def _free_corrupt_path(path: str) -> str:
    counter = 1
    while os.path.lexists(f"{path}.corrupt-{counter}"):
        counter += 1
    return f"{path}.corrupt-{counter}"


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class StateStore:
    """
    ``state.json``: ``{"version": 1, "sessions": {session_id: record}}``.

    Records are plain JSON dicts whose fields belong to the sessions layer;
    this store only keeps them. ``put`` and ``remove`` (lifecycle changes)
    write at once. ``touch`` (activity, many per answer) changes memory only
    and schedules one write ``flush_delay`` seconds later for all the touches
    in between. ``flush`` writes pending changes now; call it on service stop.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        clock: IReactorTime,
        log: Logger | None = None,
        flush_delay: float = 2.0,
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._log = log or _log
        self._flush_delay = flush_delay
        self._sessions: dict[str, dict] = {}
        self._dirty = False
        self._pending_flush: IDelayedCall | None = None

    def load(self) -> LoadedState:
        """Read ``state.json`` (a missing file is an empty state).

        A corrupt file is moved aside and reported in the result; the store then
        starts empty. Entries that are not objects are reported the same way:
        the whole file is first copied aside, then rewritten without them.
        """
        self._cancel_pending_flush()
        self._sessions = {}
        self._dirty = False
        try:
            document = load_json(self.path, self._log)
        except CorruptFileError as corrupt:
            return LoadedState(sessions={}, corrupt=corrupt)
        except IsADirectoryError:
            corrupt = move_aside(self.path, "a directory, not a file", self._log)
            return LoadedState(sessions={}, corrupt=corrupt)
        if document is None:
            return LoadedState(sessions={}, corrupt=None)
        version = document.get("version")
        if version != STATE_VERSION:
            reason = (
                f"unsupported version {version}"
                if isinstance(version, int)
                else "no version number"
            )
            return LoadedState(sessions={}, corrupt=move_aside(self.path, reason, self._log))
        sessions = document.get("sessions")
        if not isinstance(sessions, dict):
            corrupt = move_aside(self.path, "no sessions object", self._log)
            return LoadedState(sessions={}, corrupt=corrupt)
        records = {key: value for key, value in sessions.items() if isinstance(value, dict)}
        corrupt = None
        if len(records) < len(sessions):
            bad_ids = sorted(set(sessions) - set(records))
            corrupt = self._copy_aside(f"entries for sessions {', '.join(bad_ids)} are not objects")
            self._write(records)
        else:
            self._sessions = records
        return LoadedState(sessions=self.sessions(), corrupt=corrupt)

    def sessions(self) -> dict[str, dict]:
        """A copy of every record, by session id."""
        return copy.deepcopy(self._sessions)

    def get(self, session_id: str) -> dict | None:
        """A copy of one record, or None."""
        record = self._sessions.get(session_id)
        return copy.deepcopy(record) if record is not None else None

    def put(self, session_id: str, record: dict) -> None:
        """Add or replace a record and write the file now.

        If the write fails the error is raised and memory is left as it was.
        """
        sessions = dict(self._sessions)
        sessions[session_id] = copy.deepcopy(record)
        self._write(sessions)

    def remove(self, session_id: str) -> bool:
        """Remove a record and write the file now; False if there was none."""
        if session_id not in self._sessions:
            return False
        sessions = dict(self._sessions)
        del sessions[session_id]
        self._write(sessions)
        return True

    def touch(self, session_id: str, last_activity_at: object) -> bool:
        """Set a record's ``lastActivityAt`` and schedule a batched write;
        False (and nothing scheduled) for an unknown session."""
        record = self._sessions.get(session_id)
        if record is None:
            return False
        record["lastActivityAt"] = last_activity_at
        self._dirty = True
        if self._pending_flush is None:
            self._pending_flush = self._clock.callLater(self._flush_delay, self._scheduled_flush)
        return True

    def note_last_seq(self, session_id: str, seq: int) -> None:
        """Keep a session's last event seq in its record (written with the next batch), so
        numbering continues after it even if the journal loses its last events."""
        record = self._sessions.get(session_id)
        if record is None or record.get("lastSeq") == seq:
            return
        record["lastSeq"] = seq
        self._dirty = True
        if self._pending_flush is None:
            self._pending_flush = self._clock.callLater(self._flush_delay, self._scheduled_flush)

    def flush(self) -> None:
        """Write now if anything changed since the last write."""
        self._cancel_pending_flush()
        if self._dirty:
            self._write(self._sessions)

    def _scheduled_flush(self) -> None:
        self._pending_flush = None
        try:
            self.flush()
        except Exception:
            # Still dirty: the next touch or flush tries again.
            self._log.failure("could not write {path}", path=self.path)

    def _write(self, sessions: dict[str, dict]) -> None:
        write_json_atomic(self.path, {"version": STATE_VERSION, "sessions": sessions})
        self._sessions = sessions
        self._dirty = False
        self._cancel_pending_flush()

    def _cancel_pending_flush(self) -> None:
        if self._pending_flush is not None:
            if self._pending_flush.active():
                self._pending_flush.cancel()
            self._pending_flush = None

    def _copy_aside(self, reason: str) -> CorruptFileError:
        """Keep the file's current content at ``<path>.corrupt-<n>``, leaving the
        file itself in place for the caller to rewrite."""
        with open(self.path, "rb") as state_file:
            data = state_file.read()
        copy_path = _free_corrupt_path(self.path)
        write_bytes_atomic(copy_path, data)
        self._log.critical(
            "{path} is partly corrupt ({reason}): copied it to {moved_to}; loading the rest",
            path=self.path,
            reason=reason,
            moved_to=copy_path,
        )
        return CorruptFileError(path=self.path, moved_to=copy_path, reason=reason)
