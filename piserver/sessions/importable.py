"""
The pi sessions on this machine a client may import (``sessions.importable``): the
``*.jsonl`` files in the ``--import-from`` directories and in their direct
subdirectories (pi's ``--<cwd>--`` layout), newest first.

A client never names a file: it gets an ``importId``, an HMAC (with a key this process
made) of the file's place, and the server finds the file again by listing. Symlinks are
never followed, so nothing outside those directories can be reached. A listing costs
one ``stat`` per file (at most ``max_files``) plus, for the files of the page shown, a
bounded read (pifiles.summarize), remembered while a file is unchanged.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path

import attr
from twisted.logger import Logger

from piserver.common.errors import InvalidParams, InvalidSessionFile, NotFound
from piserver.sessions import pifiles
from piserver.sessions.session import iso_time

PAGE_SIZE = 50
MAX_FILES = 10000
# Files looked at for one page at most (ones that are no pi session are passed over).
MAX_EXAMINED = 4 * PAGE_SIZE
SUMMARIES_KEPT = 2000


@attr.frozen
class Candidate:
    import_id: str
    path: Path
    size: int
    mtime_ns: int

    @property
    def order(self) -> tuple:
        return (-self.mtime_ns, self.import_id)


class ImportableSessions:
    """``directories`` are the ``--import-from`` dirs. Blocking: call off the reactor."""

    log = Logger()

    def __init__(
        self,
        directories,
        key: bytes | None = None,
        max_files: int = MAX_FILES,
        page_size: int = PAGE_SIZE,
        max_line: int = pifiles.DEFAULT_MAX_LINE,
    ):
        self.directories = tuple(Path(d) for d in directories)
        self._key = key or secrets.token_bytes(32)
        self._max_files = max_files
        self._page_size = page_size
        self._max_line = max_line
        self._summaries: collections.OrderedDict[Path, tuple] = collections.OrderedDict()
        # Listings run in the reactor's thread pool, several at once.
        self._lock = threading.Lock()

    def page(self, cursor: str | None) -> dict:
        """``{"sessions": [...], "next"?}``: the page after ``cursor`` (None: the first)."""
        after = _decode_cursor(cursor) if cursor is not None else None
        candidates = sorted(self.candidates(), key=lambda c: c.order)
        if after is not None:
            candidates = [c for c in candidates if c.order > after]
        sessions, last = [], None
        for examined, candidate in enumerate(candidates):
            if len(sessions) == self._page_size or examined == MAX_EXAMINED:
                break
            last = candidate
            summary = self._summary(candidate)
            if summary is not None:
                sessions.append(_listed(candidate, summary))
        result = {"sessions": sessions}
        if last is not None and last is not candidates[-1]:
            result["next"] = _encode_cursor(last.order)
        return result

    def resolve(self, import_id: str) -> Path:
        """The file an ``importId`` names; NotFound when no listed file has it (now)."""
        for candidate in self.candidates():
            if hmac.compare_digest(candidate.import_id, import_id):
                return candidate.path
        raise NotFound(
            "no importable session has that importId (the file is gone, or the server "
            "restarted since it was listed): list them again"
        )

    def candidates(self) -> list[Candidate]:
        found = []
        for index, directory in enumerate(self.directories):
            for path in self._files_in(directory):
                if len(found) == self._max_files:
                    self.log.warn(
                        "more than {count} session files under the import dirs; the rest "
                        "are not listed",
                        count=self._max_files,
                    )
                    return found
                try:
                    status = path.lstat()
                except OSError:
                    continue
                relative = str(path.relative_to(directory))
                found.append(
                    Candidate(
                        import_id=self._id(index, relative),
                        path=path,
                        size=status.st_size,
                        mtime_ns=status.st_mtime_ns,
                    )
                )
        return found

    def _files_in(self, directory: Path):
        """Regular ``*.jsonl`` files in ``directory`` and its direct subdirectories;
        symlinks (to files or directories) are passed over."""
        try:
            top = list(os.scandir(directory))
        except OSError:
            return
        for entry in sorted(top, key=lambda e: e.name):
            if entry.is_symlink():
                continue
            if entry.is_file(follow_symlinks=False) and entry.name.endswith(".jsonl"):
                yield Path(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                try:
                    inner = list(os.scandir(entry.path))
                except OSError:
                    continue
                for file in sorted(inner, key=lambda e: e.name):
                    if (
                        not file.is_symlink()
                        and file.is_file(follow_symlinks=False)
                        and file.name.endswith(".jsonl")
                    ):
                        yield Path(file.path)

    def _id(self, index: int, relative: str) -> str:
        digest = hmac.new(self._key, f"{index}\0{relative}".encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def _summary(self, candidate: Candidate) -> pifiles.Summary | None:
        """The file's summary (remembered while its size and mtime stay); None when it
        is no pi session file."""
        with self._lock:
            kept = self._summaries.get(candidate.path)
            if kept is not None and kept[0] == (candidate.size, candidate.mtime_ns):
                self._summaries.move_to_end(candidate.path)
                return kept[1]
        try:
            summary = pifiles.summarize(candidate.path, self._max_line)
        except (OSError, InvalidSessionFile) as e:
            self.log.debug("not listed: {path}: {error}", path=str(candidate.path), error=str(e))
            summary = None
        with self._lock:
            self._summaries[candidate.path] = ((candidate.size, candidate.mtime_ns), summary)
            while len(self._summaries) > SUMMARIES_KEPT:
                self._summaries.popitem(last=False)
        return summary


def _listed(candidate: Candidate, summary: pifiles.Summary) -> dict:
    return {
        "importId": candidate.import_id,
        "cwd": summary.header.cwd,
        "firstPrompt": summary.first_prompt,
        "lastActivityAt": iso_time(summary.mtime_ns / 1e9),
        "messages": summary.messages,
        "bytes": summary.size,
    }


def _encode_cursor(order: tuple) -> str:
    raw = json.dumps(list(order), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor) -> tuple:
    problem = InvalidParams('"cursor" must be a "next" this server gave')
    if not isinstance(cursor, str) or len(cursor) > 200:
        raise problem
    try:
        order = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise problem from None
    if (
        not isinstance(order, list)
        or len(order) != 2
        or type(order[0]) is not int
        or not isinstance(order[1], str)
    ):
        raise problem
    return (order[0], order[1])
