"""
``state.json``: the index of every session, written crash-safe (``common.files``).
Each session's own record is ``sessions/<id>/session.json`` (``manager.py``).
"""

import copy
import os

import attr
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from piserver.common.files import (
    CorruptFileError,
    free_corrupt_path,
    load_json,
    move_aside,
    write_bytes_atomic,
    write_json_atomic,
)

_log = Logger()

STATE_VERSION = 1


@attr.frozen
class LoadedState:
    """What ``StateStore.load`` found: the sessions, and the corrupt file that
    was moved aside instead of being loaded (None when the file was sound)."""

    sessions: dict[str, dict]
    corrupt: CorruptFileError | None


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
        copy_path = free_corrupt_path(self.path)
        write_bytes_atomic(copy_path, data)
        self._log.critical(
            "{path} is partly corrupt ({reason}): copied it to {moved_to}; loading the rest",
            path=self.path,
            reason=reason,
            moved_to=copy_path,
        )
        return CorruptFileError(path=self.path, moved_to=copy_path, reason=reason)
