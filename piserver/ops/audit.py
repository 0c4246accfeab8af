"""
``<data-dir>/audit.log``: one JSON line per request that changes something and per
approval decision, for whoever runs the server to see who did what::

    {"time": ISO-8601, "device": name | null (the server token), "method": ...,
     "sessionId": ... | null, "repoId": ... | null, "ok": bool, "error": code | null}

It holds names, ids and error codes only: never a token, a parameter or a message
(which could quote a secret). The file is only appended to; past ``max_bytes`` it
becomes ``audit.log.1`` (the older ones move up to ``audit.log.<keep>``, and the
oldest goes).
"""

import datetime
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import attr
from twisted.logger import Logger

AUDIT_FILE = "audit.log"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5


@attr.frozen
class AuditEntry:
    time: str
    device: str | None
    method: str
    session_id: str | None
    repo_id: str | None
    ok: bool
    error: str | None

    def to_json(self) -> dict:
        return {
            "time": self.time,
            "device": self.device,
            "method": self.method,
            "sessionId": self.session_id,
            "repoId": self.repo_id,
            "ok": self.ok,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, record: dict) -> "AuditEntry":
        """ValueError for a line that is not an audit record."""
        if not isinstance(record, dict):
            raise ValueError("not an object")
        fields = {}
        for key, name in (("time", "time"), ("method", "method")):
            if not isinstance(record.get(key), str):
                raise ValueError(f"{key} is not a string")
            fields[name] = record[key]
        for key, name in (("device", "device"), ("sessionId", "session_id"), ("repoId", "repo_id")):
            value = record.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} is not a string")
            fields[name] = value
        error = record.get("error")
        return cls(
            ok=record.get("ok") is True,
            error=error if isinstance(error, str) else None,
            **fields,
        )


class AuditLog:
    """Appends entries to ``path``, rotating by size. Implements the access guard's
    ``DecisionSink``; ``clock()`` gives seconds since the epoch."""

    log = Logger()

    def __init__(
        self,
        path: str | os.PathLike,
        clock: Callable[[], float],
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
    ):
        self.path = Path(path)
        self._clock = clock
        self._max_bytes = max_bytes
        self._keep = keep

    def decided(self, device, method, session_id, repo_id, ok, error) -> None:
        self.append(AuditEntry(_iso(self._clock()), device, method, session_id, repo_id, ok, error))

    def append(self, entry: AuditEntry) -> None:
        line = (json.dumps(entry.to_json(), ensure_ascii=True) + "\n").encode("ascii")
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self._max_bytes:
            self._rotate()
        # O_APPEND: one write a line, never interleaved with another writer's.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        rotated = rotated_paths(self.path, self._keep)
        rotated[-1].unlink(missing_ok=True)
        for older, newer in zip(reversed(rotated[1:]), reversed(rotated[:-1]), strict=True):
            if newer.exists():
                newer.rename(older)
        self.path.rename(rotated[0])
        self.log.info("rotated {path}", path=str(self.path))


def rotated_paths(path: Path, keep: int) -> list[Path]:
    """``audit.log.1`` … ``audit.log.<keep>``, newest first."""
    return [path.with_name(f"{path.name}.{n}") for n in range(1, keep + 1)]


def read_entries(path: Path, keep: int = DEFAULT_KEEP) -> Iterator[AuditEntry]:
    """Every entry of the log and its rotated files, oldest first; lines that are not
    entries (a line cut short by a full disk) are skipped."""
    for candidate in [*reversed(rotated_paths(path, keep)), path]:
        try:
            with open(candidate, "rb") as lines:
                for line in lines:
                    try:
                        yield AuditEntry.from_json(json.loads(line))
                    except ValueError:
                        continue
        except FileNotFoundError:
            continue


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
