"""
Paths a client names inside a checkout, confined to it, and the blocking file
reads behind ``session.files`` and ``session.read_file`` (run in a thread).

A client path is relative to the checkout.  Refused: absolute paths, ``..``,
anything in ``.git``, and symlinks that lead out of the checkout.  The checkout
is the agent's, so what it holds is untrusted: names and contents are returned
as data, never interpreted, and every path is opened through ``common.safefs``
(component by component from the checkout's descriptor, never a symlink the
kernel follows; a symlink inside the checkout is resolved there, by the server,
only while it stays inside; only regular files are read, a bounded amount).
"""

import os
from pathlib import Path, PurePosixPath

from piserver.common import safefs
from piserver.common.errors import InvalidParams, NotFound

DEFAULT_READ_BYTES = 1024 * 1024
MAX_LISTING = 5000
# How far into a file to look for a NUL byte: git's own heuristic for "binary".
BINARY_SNIFF = 8000


def relative_path(path: str, where: str = "path") -> str:
    """``path`` normalised (``a//b/./c`` → ``a/b/c``; ``""`` → the top), or InvalidParams."""
    if not isinstance(path, str):
        raise InvalidParams(f'"{where}" must be a string')
    if "\0" in path:
        raise InvalidParams(f'"{where}" must not contain NUL')
    if path.startswith("/"):
        raise InvalidParams(f'"{where}" must be relative to the checkout, not absolute')
    parts = [part for part in PurePosixPath(path).parts if part != "."]
    if ".." in parts:
        raise InvalidParams(f'"{where}" must not contain ".."')
    if ".git" in parts:
        raise InvalidParams(f'"{where}": .git is not part of the checkout')
    return "/".join(parts)


def _open(top: int, relative: str, where: str, want_file: bool) -> safefs.Opened:
    """``relative`` opened beneath the checkout's descriptor ``top`` by safefs (no path the
    kernel resolves, so a directory swapped for a symlink meanwhile leads nowhere)."""
    try:
        if want_file:
            opened = safefs.open_regular(top, relative, follow_inside=True)
        else:
            opened = safefs.open_directory(top, relative, follow_inside=True)
    except safefs.Refused as refused:
        raise _answer(refused, relative, where, want_file) from None
    if ".git" in opened.parts:
        os.close(opened.fd)
        raise InvalidParams(f'"{where}": .git is not part of the checkout')
    return opened


def _answer(refused: safefs.Refused, relative: str, where: str, want_file: bool):
    """The client's error for a refused path (the codes it always had)."""
    reason = refused.reason
    name = relative or "."
    if reason is safefs.Reason.MISSING:
        return NotFound(f"no {'file' if want_file else 'directory'} {name!r} in the checkout")
    if reason is safefs.Reason.LEADS_OUT:
        return InvalidParams(f'"{where}" leads out of the checkout (through a symlink)')
    if reason is safefs.Reason.NOT_A_DIRECTORY:
        return InvalidParams(f"{name!r} is a file, not a directory")
    if reason is safefs.Reason.IS_A_DIRECTORY:
        return InvalidParams(f"{name!r} is a directory (see session.files)")
    if reason is safefs.Reason.NOT_REGULAR:
        return InvalidParams(f"{name!r} is not a regular file")
    if reason is safefs.Reason.SYMLINK:
        # Swapped for a symlink while being opened: the agent is at work; try again.
        return InvalidParams(f"{name!r} changed while being opened (a symlink swapped in)")
    return InvalidParams(f"{name!r} cannot be read: {refused.detail}")


def list_directory(checkout: Path, path: str) -> dict:
    """``{path, entries: [{name, path, type, size?, target?, nameReplaced?}], truncated}``,
    sorted by name. A name that is not UTF-8 is sent with U+FFFD for each byte that is
    not, and ``nameReplaced: true``."""
    relative = relative_path(path)
    with safefs.root(checkout) as top:
        opened = _open(top, relative, "path", want_file=False)
        try:
            found = safefs.scan(opened.fd)
        finally:
            os.close(opened.fd)
    if not opened.parts:
        found = [entry for entry in found if entry.name != ".git"]
    shown, _ = safefs.wire_name(relative)
    entries = []
    for item in found[:MAX_LISTING]:
        name, replaced = safefs.wire_name(item.name)
        entry = {"name": name, "path": f"{shown}/{name}" if shown else name}
        entry["type"] = item.kind.value
        if item.kind is safefs.Kind.SYMLINK:
            entry["target"], target_replaced = safefs.wire_name(item.target)
            replaced = replaced or target_replaced
        elif item.kind is safefs.Kind.FILE:
            entry["size"] = item.size
        if replaced:
            entry["nameReplaced"] = True
        entries.append(entry)
    return {"path": shown, "entries": entries, "truncated": len(found) > MAX_LISTING}


def read_file(checkout: Path, path: str, max_bytes: int = DEFAULT_READ_BYTES) -> dict:
    """``{path, size, content, truncated}`` for text, ``{path, size, binary: true}`` else."""
    relative = relative_path(path)
    with safefs.root(checkout) as top:
        opened = _open(top, relative, "path", want_file=True)
    try:
        data = safefs.read_at_most(opened.fd, max_bytes)
    finally:
        os.close(opened.fd)
    size = opened.info.st_size
    relative, _ = safefs.wire_name(relative)
    truncated = len(data) > max_bytes
    data = data[:max_bytes]
    if b"\0" in data[:BINARY_SNIFF]:
        return {"path": relative, "size": size, "binary": True}
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Cut in the middle of a character by max_bytes: drop the partial one.
        if not (truncated and e.start >= len(data) - 3):
            return {"path": relative, "size": size, "binary": True}
        content = data[: e.start].decode("utf-8")
    return {"path": relative, "size": size, "content": content, "truncated": truncated}
