"""
pi's own session files (JSONL, see pi's docs/session-format.md) as untrusted input:
a bounded summary for a listing, a streaming validated copy for an import, and the
export of a server session's file for pi in a terminal.

Every read is bounded (file size, line length, how far a summary scans); a file is
opened without following a symlink and must be a regular file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import attr

from piserver.common import safefs
from piserver.common.errors import InvalidSessionFile

# An import copies at most this much (a long conversation with tool output is a few MB).
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# One entry (a tool result with an image) may be large, but not unbounded.
DEFAULT_MAX_LINE = 8 * 1024 * 1024
# A listing reads the header and looks this far for the first prompt...
SUMMARY_SCAN_BYTES = 256 * 1024
# ...and counts message lines over at most this much of a file (see Summary.messages).
COUNT_SCAN_BYTES = DEFAULT_MAX_BYTES
FIRST_PROMPT_LENGTH = 200
# Versions of the session format pi 1.6 reads (it migrates 1 and 2 on load).
KNOWN_VERSIONS = (1, 2, 3)
_CHUNK = 1024 * 1024
# pi writes entries with JSON.stringify, "type" first: counting these prefixes needs no parse
# (the spaced form is Python's json.dumps, for files written by other tools).
_MESSAGE_PREFIXES = (b'{"type":"message"', b'{"type": "message"')
_ENTRY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


@attr.frozen
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_line: int = DEFAULT_MAX_LINE


@attr.frozen
class Header:
    session_id: str
    cwd: str
    version: int


@attr.frozen
class Summary:
    header: Header
    first_prompt: str | None
    # Message entries in the first COUNT_SCAN_BYTES of the file.
    messages: int
    size: int
    mtime_ns: int


def open_regular(path: Path):
    """``path`` opened for reading (binary), never through a symlink (its last component),
    only a regular file, opened without blocking (a FIFO would hold a thread forever).
    Its directory is the server's or the user's (``--import-from``), so it is followed."""
    try:
        with safefs.root(path.parent, follow=True) as directory:
            return safefs.reader(safefs.open_regular(directory, path.name))
    except safefs.Refused as refused:
        # As os.open would say: callers handle a missing or linked file as an OSError.
        if refused.reason is safefs.Reason.MISSING:
            raise FileNotFoundError(errno.ENOENT, "no such file", str(path)) from None
        if refused.reason is safefs.Reason.SYMLINK:
            raise OSError(errno.ELOOP, "a symlink, not followed", str(path)) from None
        raise InvalidSessionFile(f"{path.name} is not a regular file") from None


def parse_header(line: bytes, name: str) -> Header:
    """The header (first line) of a pi session file; InvalidSessionFile if it is none."""
    try:
        header = json.loads(line)
    except ValueError:
        raise InvalidSessionFile(f"{name}: line 1 is not JSON") from None
    if not isinstance(header, dict) or header.get("type") != "session":
        raise InvalidSessionFile(f'{name}: line 1 is not a pi session header (type "session")')
    version = header.get("version", 1)
    if type(version) is not int or version not in KNOWN_VERSIONS:
        raise InvalidSessionFile(
            f"{name}: session format version {str(version)[:20]} is not one pi 1.6 reads"
        )
    session_id, cwd = header.get("id"), header.get("cwd")
    if not isinstance(session_id, str) or not session_id or len(session_id) > 200:
        raise InvalidSessionFile(f'{name}: the header has no session "id"')
    if not isinstance(cwd, str) or not cwd.startswith("/") or "\x00" in cwd or len(cwd) > 4096:
        raise InvalidSessionFile(f'{name}: the header\'s "cwd" is not an absolute path')
    return Header(session_id=session_id, cwd=os.path.normpath(cwd), version=version)


def summarize(path: Path, max_line: int = DEFAULT_MAX_LINE) -> Summary:
    """What a listing shows of ``path``: its header, first prompt and message count, read
    in bounded chunks (never the whole file at once)."""
    with open_regular(path) as lines:
        status = os.fstat(lines.fileno())
        header = parse_header(_line(lines, max_line, path.name, 1), path.name)
        first_prompt = None
        scanned = 0
        messages = 0
        while scanned < SUMMARY_SCAN_BYTES and first_prompt is None:
            line = lines.readline(max_line + 1)
            if not line:
                break
            scanned += len(line)
            if line.startswith(_MESSAGE_PREFIXES):
                messages += 1
                first_prompt = _user_text(line)
        # The rest is only counted, in chunks (the loop above stopped at a line's start).
        tail = b"\n"
        while scanned < COUNT_SCAN_BYTES:
            chunk = lines.read(min(_CHUNK, COUNT_SCAN_BYTES - scanned))
            if not chunk:
                break
            scanned += len(chunk)
            chunk = tail + chunk
            messages += sum(chunk.count(b"\n" + prefix) for prefix in _MESSAGE_PREFIXES)
            tail = chunk[-len(_MESSAGE_PREFIXES[1]) :]
    return Summary(
        header=header,
        first_prompt=first_prompt,
        messages=messages,
        size=status.st_size,
        mtime_ns=status.st_mtime_ns,
    )


def copy_validated(source: Path, target: Path, limits: Limits) -> Header:
    """Check every line of ``source`` and write it to ``target`` (a new file). Raises
    InvalidSessionFile saying what is wrong (and ``target`` is then removed)."""
    name = source.name
    try:
        with open_regular(source) as lines, open(target, "xb") as copy:
            size = os.fstat(lines.fileno()).st_size
            if size > limits.max_bytes:
                raise InvalidSessionFile(
                    f"{name} is {_mb(size)}, over the import limit of {_mb(limits.max_bytes)}"
                )
            first = _line(lines, limits.max_line, name, 1)
            header = parse_header(first, name)
            copy.write(_compact(json.loads(first)))
            number = 1
            while True:
                number += 1
                line = _line(lines, limits.max_line, name, number)
                if not line:
                    break
                if not line.strip():
                    continue
                _check_entry(line, name, number, header.version)
                copy.write(line if line.endswith(b"\n") else line + b"\n")
                if copy.tell() > limits.max_bytes + 4096:
                    raise InvalidSessionFile(f"{name} grew past the import limit while read")
            if number <= 2:
                raise InvalidSessionFile(f"{name} holds no conversation")
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return header


def with_header(source: Path, target: Path, **changes) -> None:
    """Copy pi session file ``source`` to ``target`` with header fields replaced."""
    with source.open("rb") as lines, target.open("xb") as copy:
        header = json.loads(lines.readline())
        header.update(changes)
        copy.write(_compact(header))
        while chunk := lines.read(_CHUNK):
            copy.write(chunk)


def newest(pi_session_dir: Path) -> Path | None:
    """The session file pi ``--continue`` resumes in a server session's pi dir."""
    files = [p for p in pi_session_dir.glob("*.jsonl") if p.is_file() and not p.is_symlink()]
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)


def encode_cwd(cwd: str) -> str:
    """The directory pi keeps a working directory's sessions in (under its sessions dir)."""
    return "--" + re.sub(r"[/\\:]", "-", re.sub(r"^[/\\]", "", cwd)) + "--"


def exported(source: Path, cwd: str, now: float, max_bytes: int) -> tuple[str, bytes]:
    """``(fileName, content)`` of server session file ``source`` for pi at the desk: a new
    session id (the original file, if any, keeps its own), working in ``cwd``."""
    with open_regular(source) as lines:
        size = os.fstat(lines.fileno()).st_size
        if size > max_bytes:
            raise InvalidSessionFile(
                f"the session file is {_mb(size)}, over the export limit of {_mb(max_bytes)}"
            )
        header = json.loads(lines.readline())
        body = lines.read(max_bytes)
    session_id = str(uuid.uuid4())
    stamp = datetime.fromtimestamp(now, UTC)
    timestamp = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    header.update(id=session_id, cwd=cwd, timestamp=timestamp)
    header.pop("parentSession", None)
    # An agent still writing may leave a last line unfinished: only whole lines go.
    body = body[: body.rfind(b"\n") + 1]
    file_name = f"{re.sub(r'[:.]', '-', timestamp)}_{session_id}.jsonl"
    return file_name, _compact(header) + body


def _line(lines, max_line: int, name: str, number: int) -> bytes:
    line = lines.readline(max_line + 1)
    if len(line) > max_line:
        raise InvalidSessionFile(
            f"{name}: line {number} is longer than {_mb(max_line)}; not a session pi wrote"
        )
    return line


def _check_entry(line: bytes, name: str, number: int, version: int) -> None:
    try:
        entry = json.loads(line)
    except ValueError:
        raise InvalidSessionFile(f"{name}: line {number} is not JSON") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise InvalidSessionFile(f'{name}: line {number} is not an entry (no "type")')
    if entry["type"] == "session":
        raise InvalidSessionFile(f"{name}: line {number} is a second session header")
    entry_id = entry.get("id")
    # Version 1 files are a plain sequence, without ids (pi adds them when migrating).
    if version > 1 and (not isinstance(entry_id, str) or not _ENTRY_ID.match(entry_id)):
        raise InvalidSessionFile(f'{name}: line {number} has no valid entry "id"')
    parent = entry.get("parentId")
    if parent is not None and not isinstance(parent, str):
        raise InvalidSessionFile(f'{name}: line {number} has a bad "parentId"')
    if entry["type"] == "message":
        message = entry.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidSessionFile(f"{name}: line {number} is a message without a role")


def _user_text(line: bytes) -> str | None:
    try:
        message = json.loads(line).get("message") or {}
    except (ValueError, AttributeError):
        return None
    if not isinstance(message, dict) or message.get("role") != "user":
        return None
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    if not isinstance(content, str) or not content.strip():
        return None
    text = " ".join(content.split())
    return text if len(text) <= FIRST_PROMPT_LENGTH else text[: FIRST_PROMPT_LENGTH - 1] + "…"


def _compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def _mb(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size} bytes"
    return f"{size / (1024 * 1024):.1f} MB"
