"""
Intents: what a create or delete is about to do, written into the session's directory
before it acts outside the session's own files (a worktree and a branch in the user's
repository) and removed once it is done. A kill -9 in between leaves the intent behind,
and the next start undoes the create or finishes the delete (``recovery``).
"""

import enum
from pathlib import Path

import attr
from twisted.logger import Logger

from piserver.common.files import CorruptFileError, load_json, write_json_atomic
from piserver.sessions.session import SESSION_ID, SESSION_RECORD, Session

INTENT_RECORD = "intent.json"
# A session directory is made under this name and renamed into place with its intent in
# it, and renamed to REMOVING_PREFIX before it is removed: whoever lists the sessions
# (recovery, a test) never sees one half made or half removed. Leftovers of a crash are
# removed at the next start (``recovery``).
STAGING_PREFIX = ".new-"
REMOVING_PREFIX = ".gone-"

log = Logger()


class Intent(enum.Enum):
    CREATE = "create"
    DELETE = "delete"
    # A warm agent's directory: removed at start unless it became a session's.
    WARM = "warm"

    def __str__(self) -> str:
        return self.value


@attr.s(auto_attribs=True, frozen=True)
class Interrupted:
    """A create or delete a crash interrupted: what it was, and the session's record."""

    intent: Intent
    record: dict


def write_intent(session: Session, intent: Intent, extra: dict | None = None) -> None:
    _write_intent_into(session.directory, session, intent, extra)


def _write_intent_into(
    directory: Path, session: Session, intent: Intent, extra: dict | None = None
) -> None:
    write_json_atomic(
        directory / INTENT_RECORD,
        {"action": intent.value, "record": {**session.record(), **(extra or {})}},
    )


def make_directory(session: Session, intent: Intent | None) -> None:
    """Make ``session``'s directory, with ``intent`` in it from the moment it appears."""
    staging = session.directory.with_name(STAGING_PREFIX + session.id)
    staging.mkdir(mode=0o700, parents=True)
    if intent is not None:
        _write_intent_into(staging, session, intent)
    staging.rename(session.directory)


def clear_intent(session: Session) -> None:
    (session.directory / INTENT_RECORD).unlink(missing_ok=True)


def leftovers(sessions_dir: Path) -> list[Path]:
    """The directories in ``sessions_dir`` a crash left half made or half removed."""
    if not sessions_dir.is_dir():
        return []
    return sorted(
        path
        for path in sessions_dir.iterdir()
        if path.name.startswith((STAGING_PREFIX, REMOVING_PREFIX))
    )


def interrupted(sessions_dir: Path) -> list[Interrupted]:
    """The creates and deletes a crash interrupted, in ``sessions_dir``."""
    found: list[Interrupted] = []
    if not sessions_dir.is_dir():
        return found
    for directory in sorted(sessions_dir.iterdir()):
        if not SESSION_ID.match(directory.name) or not (directory / INTENT_RECORD).exists():
            continue
        try:
            written = load_json(directory / INTENT_RECORD, log)
            intent, record = Intent(written["action"]), written["record"]
            if record.get("sessionId") != directory.name:
                raise ValueError("the intent names another session")
        except (CorruptFileError, OSError, KeyError, TypeError, ValueError, AttributeError) as e:
            log.error(
                "session directory {path}: unreadable intent: {error}",
                path=str(directory),
                error=repr(e),
            )
            continue
        if intent in (Intent.CREATE, Intent.WARM) and (directory / SESSION_RECORD).exists():
            # The create got as far as recording the session: it stands.
            (directory / INTENT_RECORD).unlink(missing_ok=True)
            continue
        found.append(Interrupted(intent, record))
    return found
