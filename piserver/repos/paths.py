"""
Paths a client names inside a checkout, confined to it, and the blocking file
reads behind ``session.files`` and ``session.read_file`` (run in a thread).

A client path is relative to the checkout.  Refused: absolute paths, ``..``,
anything in ``.git``, and symlinks that lead out of the checkout.  The checkout
is the agent's, so what it holds is untrusted: names and contents are returned
as data, never interpreted.
"""

import os
import stat
from pathlib import Path, PurePosixPath

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


def resolve(checkout: Path, path: str, where: str = "path") -> Path:
    """The real location of ``path`` in ``checkout``, refusing symlinks that lead out."""
    relative = relative_path(path, where)
    top = Path(os.path.realpath(checkout))
    target = Path(os.path.realpath(top / relative))
    if target != top and top not in target.parents:
        raise InvalidParams(f'"{where}" leads out of the checkout (through a symlink)')
    if ".git" in target.relative_to(top).parts:
        raise InvalidParams(f'"{where}": .git is not part of the checkout')
    return target


def list_directory(checkout: Path, path: str) -> dict:
    """``{path, entries: [{name, path, type, size?, target?}], truncated}``, sorted by name."""
    relative = relative_path(path)
    directory = resolve(checkout, path)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise NotFound(f"no directory {relative or '.'!r} in the checkout") from None
    except NotADirectoryError:
        raise InvalidParams(f"{relative!r} is a file, not a directory") from None
    if directory == Path(os.path.realpath(checkout)):
        names = [name for name in names if name != ".git"]
    entries = []
    for name in names[:MAX_LISTING]:
        try:
            info = os.lstat(directory / name)
            target = os.readlink(directory / name) if stat.S_ISLNK(info.st_mode) else None
        except OSError:
            continue  # gone since the listing: the agent may be at work
        entry = {"name": name, "path": f"{relative}/{name}" if relative else name}
        if target is not None:
            entry["type"] = "symlink"
            entry["target"] = target
        elif stat.S_ISDIR(info.st_mode):
            entry["type"] = "directory"
        elif stat.S_ISREG(info.st_mode):
            entry["type"] = "file"
            entry["size"] = info.st_size
        else:
            entry["type"] = "other"
        entries.append(entry)
    return {"path": relative, "entries": entries, "truncated": len(names) > MAX_LISTING}


def read_file(checkout: Path, path: str, max_bytes: int = DEFAULT_READ_BYTES) -> dict:
    """``{path, size, content, truncated}`` for text, ``{path, size, binary: true}`` else."""
    relative = relative_path(path)
    target = resolve(checkout, path)
    try:
        # O_NOFOLLOW: the path was resolved above; a symlink swapped in since is refused.
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise NotFound(f"no file {relative!r} in the checkout") from None
    except OSError as e:
        raise InvalidParams(f"{relative!r} cannot be read: {e.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidParams(f"{relative!r} is a directory (see session.files)")
        raise InvalidParams(f"{relative!r} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    size = info.st_size
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
