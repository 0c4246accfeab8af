"""
The files of a session's agent that the server itself reads: what ``clone``/``fork``
copy into the new session (pi's session files, the agent dir's ``settings.json``) and
pi's HTML export.

The agent writes its pi dir and agent dir from inside its sandbox, at any moment: a
file there may be a symlink to the server's own files (``server-token``, ``.env``,
``/proc/self/environ``), a FIFO that blocks whoever opens it, or grow without end. So
everything here is read through ``common.safefs``: no symlink followed (a linked entry
is skipped, never read through), only regular files, opened without blocking, and
never more than a bound. The directories themselves (``sessions/<id>/pi``,
``.../agent``) are the server's: the agent can write in them, not replace them.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from twisted.logger import Logger

from piserver.common import safefs
from piserver.common.errors import InvalidState

SETTINGS = "settings.json"
# pi's settings are a few hundred bytes.
MAX_SETTINGS_BYTES = 1024 * 1024
# A conversation with images and long tool output runs to tens of MB; more is no
# conversation pi wrote, and copying it would only fill the disk. The bound is for all
# of a session's conversations together: many sparse files cost the agent nothing.
MAX_CONVERSATION_BYTES = 512 * 1024 * 1024
# Its first line, the header, is small.
MAX_HEADER_BYTES = 64 * 1024
# pi's HTML export of a long conversation (the answer is bounded by the frame limit too).
MAX_EXPORT_BYTES = 64 * 1024 * 1024

_log = Logger()


def copy_for_fork(source_pi: Path, source_agent: Path, target_pi: Path, target_agent: Path, cwd):
    """Seed a new session from another's files: each pi session file (``*.jsonl``, its
    header's ``cwd`` set to ``cwd``) and the agent dir's ``settings.json``. An entry that
    is not a regular file (a symlink, FIFO, device) is skipped and logged."""
    left = MAX_CONVERSATION_BYTES
    with contextlib.closing(_regular_files(source_pi, ".jsonl")) as found:
        for name, opened in found:
            with safefs.reader(opened) as lines:
                left -= _copy_conversation(lines, target_pi / name, cwd, left)
    try:
        with safefs.root(source_agent) as directory:
            settings = safefs.read_bytes(directory, SETTINGS, MAX_SETTINGS_BYTES)
    except FileNotFoundError:
        return  # no agent dir of its own (a session made before there were any)
    except safefs.Refused as refused:
        if refused.reason is not safefs.Reason.MISSING:
            _skipped(source_agent, SETTINGS, refused.reason.value)
        return
    descriptor = os.open(target_agent / SETTINGS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as copy:
        copy.write(settings)


def _regular_files(directory_path: Path, suffix: str):
    """``(name, opened)`` for each regular file named ``*suffix`` in the directory (none if
    it does not exist); anything else of that name is skipped and logged."""
    try:
        directory = safefs.open_root(directory_path)
    except FileNotFoundError:
        return
    try:
        for entry in safefs.scan(directory):
            if not entry.name.endswith(suffix):
                continue
            if entry.kind is not safefs.Kind.FILE:
                _skipped(directory_path, entry.name, entry.kind.value)
                continue
            try:
                opened = safefs.open_regular(directory, entry.name)
            except safefs.Refused as refused:
                _skipped(directory_path, entry.name, refused.reason.value)
                continue
            yield entry.name, opened
    finally:
        os.close(directory)


def read_export(pi_dir: Path, name: str, limit: int = MAX_EXPORT_BYTES) -> str:
    """pi's export ``name`` in ``pi_dir``, as text: a regular file, not through a link,
    at most ``limit`` bytes (InvalidState otherwise)."""
    with safefs.root(pi_dir) as directory:
        try:
            data = safefs.read_bytes(directory, name, limit)
        except safefs.Refused as refused:
            if refused.reason is safefs.Reason.TOO_LARGE:
                raise InvalidState(
                    f"pi's HTML export is larger than {limit // (1024 * 1024)} MiB"
                ) from None
            _log.warn(
                "pi's HTML export {name} was not read: {reason} (changed by the agent?)",
                name=name,
                reason=refused.reason.value,
            )
            raise InvalidState(
                f"pi's HTML export could not be read ({refused.reason.value})"
            ) from None
    return data.decode("utf-8", errors="replace")


def _copy_conversation(lines, target: Path, cwd, limit: int) -> int:
    """Copy a pi session file for a session working in ``cwd`` (pi resumes, with
    ``--continue``, only the conversations its header says belong to the working
    directory), at most ``limit`` bytes after its header; the bytes copied."""
    header_line = lines.readline(MAX_HEADER_BYTES + 1)
    try:
        header = json.loads(header_line) if len(header_line) <= MAX_HEADER_BYTES else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("type") != "session":
        raise InvalidState(f"{target.name} is no pi session file")
    header["cwd"] = str(cwd)
    try:
        with open(target, "xb") as copy:
            copy.write(json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n")
            return safefs.copy_limited(lines, copy, limit, target.name)
    except safefs.Refused:
        target.unlink(missing_ok=True)
        raise InvalidState(
            f"the session's conversations are larger than "
            f"{MAX_CONVERSATION_BYTES // (1024 * 1024)} MiB together: {target.name} not copied"
        ) from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _skipped(directory: Path, name: str, why: str) -> None:
    _log.warn(
        "not copying {directory}/{name}: {why} (only regular files are copied, never "
        "through a link)",
        directory=str(directory),
        name=safefs.wire_name(name)[0],
        why=why,
    )
