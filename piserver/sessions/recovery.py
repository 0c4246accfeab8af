"""
Recovery at start: the sessions to restore, read from ``state.json`` and, where it falls
short (unreadable, missing entries), from the ``session.json`` beside each session's
files; and what a crash interrupted (``intents``), undone or finished.
"""

from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Protocol

import attr
from twisted.logger import Logger

from piserver.common.files import CorruptFileError, load_json
from piserver.sessions.intents import Intent, Interrupted, interrupted, leftovers
from piserver.sessions.session import SESSION_ID, SESSION_RECORD, Session


class Index(Protocol):
    """The part of ``state.json`` (``index.StateStore``) recovery reads and mends."""

    def load(self): ...

    def put(self, session_id: str, record: dict) -> None: ...

    def remove(self, session_id: str) -> bool: ...


@attr.s(auto_attribs=True, frozen=True)
class Restored:
    """What start found: the sessions (no live parts yet), the interrupted work, and the
    directories left half made or half removed."""

    sessions: list[Session]
    interrupted: list[Interrupted]
    leftovers: list[Path]

    @property
    def unfinished(self) -> bool:
        """Whether ``Recovery.finish`` has anything to do."""
        return bool(self.interrupted or self.leftovers)


class Undo(Protocol):
    """The part of ``teardown.Teardown`` recovery uses."""

    def __call__(self, session: Session) -> Awaitable: ...

    def remove_leftover(self, path: Path) -> Awaitable: ...


class Recovery:
    """``tear_down(session)`` undoes a session (``teardown.Teardown``)."""

    log = Logger()

    def __init__(
        self,
        sessions_dir: Path,
        store: Index,
        tear_down: Undo,
    ) -> None:
        self._sessions_dir = sessions_dir
        self._store = store
        self._tear_down = tear_down

    def restore(self) -> Restored:
        """The sessions to restore; ``state.json`` is mended to list exactly those."""
        found = interrupted(self._sessions_dir)
        loaded = self._store.load()
        if loaded.corrupt is not None:
            self.log.critical(
                "state.json was unreadable and was moved to {moved_to}; sessions are "
                "recovered from their directories",
                moved_to=str(loaded.corrupt.moved_to),
            )
        records = dict(loaded.sessions)
        doomed = {item.record["sessionId"] for item in found}
        for session_id in doomed:
            records.pop(session_id, None)
            self._store.remove(session_id)
        for session_id, record in self._records_in_directories(set(records) | doomed):
            self.log.warn(
                "session {session_id} recovered from its directory", session_id=session_id
            )
            records[session_id] = record
            self._store.put(session_id, record)
        sessions = []
        for session_id, record in records.items():
            try:
                session = Session.from_record(
                    self._sessions_dir, {**record, "sessionId": session_id}
                )
            except (KeyError, TypeError, ValueError) as e:
                session = self._from_directory(session_id, e)
                if session is None:
                    continue
            sessions.append(session)
        return Restored(sessions, found, leftovers(self._sessions_dir))

    async def finish(self, restored: Restored) -> None:
        """Remove what was left half made or half removed, undo the interrupted creates
        (and warm agents' directories), finish the deletes."""
        for path in restored.leftovers:
            self.log.info("removing {path}, left by a crash", path=str(path))
            try:
                await self._tear_down.remove_leftover(path)
            except Exception:
                self.log.failure("could not remove {path}", path=str(path))
        for item in restored.interrupted:
            session_id = item.record.get("sessionId")
            if item.intent is Intent.WARM:
                self.log.info(
                    "removing the warm agent directory {session_id}", session_id=session_id
                )
            else:
                self.log.warn(
                    "session {session_id}: {what} after an interrupted {action}",
                    session_id=session_id,
                    action=str(item.intent),
                    what="undoing the create"
                    if item.intent is Intent.CREATE
                    else "finishing the delete",
                )
            try:
                await self._tear_down(Session.from_record(self._sessions_dir, item.record))
            except Exception:
                self.log.failure("session {session_id}: could not clean up", session_id=session_id)

    def _from_directory(self, session_id, error: Exception) -> Session | None:
        """The session of a bad state.json entry, from its directory's session.json."""
        try:
            if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
                raise ValueError("bad session id")
            record = load_json(self._sessions_dir / session_id / SESSION_RECORD, self.log)
            if not isinstance(record, dict) or record.get("sessionId") != session_id:
                raise ValueError("no session.json of that session")
            session = Session.from_record(self._sessions_dir, record)
        except (CorruptFileError, OSError, KeyError, TypeError, ValueError) as e:
            self.log.error(
                "skipping unreadable session entry {session_id}: {error}; "
                "its directory has none either ({other})",
                session_id=str(session_id)[:80],
                error=repr(error),
                other=repr(e),
            )
            return None
        self.log.warn(
            "session {session_id}: its state.json entry is unusable ({error}); "
            "restored from its session.json",
            session_id=session_id,
            error=repr(error),
        )
        self._store.put(session_id, record)
        return session

    def _records_in_directories(self, known: set) -> Iterator[tuple[str, dict]]:
        """Session records kept in ``sessions/<id>/`` that state.json does not list."""
        if not self._sessions_dir.is_dir():
            return
        for directory in sorted(self._sessions_dir.iterdir()):
            if directory.name in known or not SESSION_ID.match(directory.name):
                continue
            try:
                record = load_json(directory / SESSION_RECORD, self.log)
            except (CorruptFileError, OSError) as e:
                self.log.error(
                    "session directory {path} has no readable record: {error}",
                    path=str(directory),
                    error=str(e),
                )
                continue
            if isinstance(record, dict) and record.get("sessionId") == directory.name:
                yield directory.name, record
