"""
Undoing a session, the one way it is done: a deleted session, one whose create failed, a
warm agent's, and one a crash left half created or half deleted (``recovery``).

The order is what makes it crash-safe: the delete intent first (a crash from there on
finishes the delete at the next start), then the session's record (it cannot come back),
then the agent, its stream and approvals, the checkout, and last the directory (renamed
out of the sessions' names first, then removed).
"""

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from twisted.logger import Logger

from piserver.sessions.intents import REMOVING_PREFIX, Intent, write_intent
from piserver.sessions.session import SESSION_RECORD, Session


class Index(Protocol):
    """The part of ``state.json`` (``index.StateStore``) a teardown changes."""

    def remove(self, session_id: str) -> bool: ...


class Checkouts(Protocol):
    """The part of ``repos.checkouts.Checkouts`` a teardown uses."""

    def remove(self, session: Session) -> Awaitable[dict]: ...


class Teardown:
    """``in_thread(f, *args, **kwargs)`` runs blocking file work off the reactor thread;
    ``checkouts`` is None on a server without code sessions."""

    log = Logger()

    def __init__(
        self, store: Index, checkouts: Checkouts | None, in_thread: Callable[..., Awaitable]
    ) -> None:
        self._store = store
        self._checkouts = checkouts
        self._in_thread = in_thread

    def has_checkout(self, session: Session) -> bool:
        return self._checkouts is not None and session.mode == "code"

    async def __call__(self, session: Session, checkout: bool | None = None) -> dict:
        """Undo ``session`` (taken out of the registry already); ``checkout``: remove its
        checkout too (None: if it is a code session). Returns what removing it said."""
        if checkout is None:
            checkout = self.has_checkout(session)
        # A session restored from an intent at start has no live parts: its agent never
        # started in this process, and its intent is already there.
        live = session.lifecycle is not None
        if live:
            write_intent(session, Intent.DELETE)
        (session.directory / SESSION_RECORD).unlink(missing_ok=True)
        self._store.remove(session.id)
        if live:
            try:
                # The agent first: pi may still send events (an ``agent_settled`` after
                # ``agent_end``) or ask approvals until it has exited, and they go to an
                # open journal.
                await session.lifecycle.delete()
            finally:
                session.stream.close()
                session.approvals.close()
                session.calls.close()
        result = await self._checkouts.remove(session) if checkout else {}
        await self._remove_directory(session.directory)
        return result

    def _remove_directory(self, path: Path) -> Awaitable:
        # A checkout can hold many files: remove it off the reactor thread.
        return self._in_thread(_remove, path)

    def remove_leftover(self, path: Path) -> Awaitable:
        """Remove a directory a crash left half made or half removed (``intents``)."""
        return self._in_thread(shutil.rmtree, path, ignore_errors=True)


def _remove(path: Path) -> None:
    """Remove a session's directory: gone from the sessions' names at once, then its files."""
    doomed = path.with_name(REMOVING_PREFIX + path.name)
    try:
        path.rename(doomed)
    except FileNotFoundError:
        return
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)
