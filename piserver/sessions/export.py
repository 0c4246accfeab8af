"""
A server session's conversation as a pi session file for pi in a terminal
(``session.export``, ``pi-server session export``): its newest pi file, with a new
session id and the working directory the user has at the desk.
"""

from __future__ import annotations

from pathlib import Path

from piserver.common.errors import InvalidState
from piserver.sessions import pifiles

# A reply carries the whole file: keep it well under the default frame limit (16 MiB).
MAX_EXPORT_BYTES = 12 * 1024 * 1024


def desk_cwd(record: dict) -> str:
    """Where the conversation goes on at the desk: the directory it was imported from,
    else a local repository's own working tree, else the session's working directory."""
    if isinstance(record.get("importedCwd"), str):
        return record["importedCwd"]
    if record.get("repoSource") == "local" and isinstance(record.get("repoPath"), str):
        return record["repoPath"]
    return record["worktreePath"]


def export_session(
    directory: Path, record: dict, now: float, max_bytes: int = MAX_EXPORT_BYTES
) -> tuple[str, bytes]:
    """``(fileName, content)`` of the session in ``directory`` (``sessions/<id>``)."""
    source = pifiles.newest(directory / "pi")
    if source is None:
        raise InvalidState("the session has no conversation yet: send a prompt first")
    return pifiles.exported(source, desk_cwd(record), now, max_bytes)
