"""
Files that must survive a crash: atomic writes, guarded reads.

A write goes to a temporary file in the same directory, is flushed and fsynced,
then renamed over the target and the directory fsynced: after a ``kill -9`` or
a power cut the target holds either the old content or the new, never a mix.

A file that cannot be parsed is never replaced by an empty one: it is renamed
to ``<name>.corrupt-<n>`` (kept for a human to inspect), logged at critical
level, and reported to the caller, who carries on with the rest.
"""

import json
import os
import stat
import tempfile

import attr
from twisted.logger import Logger

_log = Logger()


@attr.s(auto_exc=True, str=False)
class CorruptFileError(Exception):
    """A JSON file could not be used; it now lives at ``moved_to``."""

    path: str = attr.ib()
    moved_to: str = attr.ib()
    reason: str = attr.ib()

    def __str__(self) -> str:
        return f"{self.path} is corrupt ({self.reason}); moved to {self.moved_to}"


def loose_mode(file: str | os.PathLike | int) -> int | None:
    """The permission bits of a file (path or descriptor) if group or others have
    any access to it, else None."""
    mode = stat.S_IMODE(os.stat(file).st_mode)
    return mode if mode & 0o077 else None


def write_bytes_atomic(
    path: str | os.PathLike, data: bytes, mode: int = 0o600, skip_unchanged: bool = False
) -> None:
    """Replace ``path`` with ``data`` atomically; the file gets ``mode``.

    On any failure the old file is untouched and no temporary file is left. With
    ``skip_unchanged``, a regular file that holds ``data`` with ``mode`` already is left
    as it is (written by this function, it is on disk): two fsyncs fewer, which is most
    of what rewriting a small file costs.
    """
    path = os.fspath(path)
    if skip_unchanged and _holds(path, data, mode):
        return
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


def _holds(path: str, data: bytes, mode: int) -> bool:
    """``path`` is a regular file (not followed through a link) of ``mode`` holding
    ``data``."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or stat.S_IMODE(status.st_mode) != mode:
            return False
        if status.st_size != len(data):
            return False
        return os.read(descriptor, len(data) + 1) == data
    except OSError:
        return False
    finally:
        os.close(descriptor)


def write_json_atomic(
    path: str | os.PathLike, obj: object, mode: int = 0o600, skip_unchanged: bool = False
) -> None:
    """Replace ``path`` with ``obj`` as JSON, atomically (see ``write_bytes_atomic``).

    ``obj`` is serialised before anything touches the disk, so a value that
    cannot be written as strict JSON (NaN, a set...) raises and changes nothing.
    """
    data = json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=2, sort_keys=True)
    write_bytes_atomic(path, (data + "\n").encode("utf-8"), mode, skip_unchanged)


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
    moved_to = free_corrupt_path(path)
    os.rename(path, moved_to)
    (log or _log).critical(
        "{path} is corrupt ({reason}): moved it to {moved_to} and carrying on without it",
        path=path,
        reason=reason,
        moved_to=moved_to,
    )
    return CorruptFileError(path=path, moved_to=moved_to, reason=reason)


def free_corrupt_path(path: str) -> str:
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
