"""
Reading a tree someone else controls (an agent's checkout, pi dir or agent dir) without
ever letting it redirect the read.

The agent can swap any directory or file of its tree for a symlink, a FIFO or a device
link at any moment, also between two system calls of ours. So nothing here hands a path
to the kernel for it to resolve: a path is walked one component at a time from a
directory descriptor, each component opened with ``O_NOFOLLOW`` (``O_DIRECTORY`` for
directories), the final file with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO opens without
waiting for a writer) and ``fstat``-ed: only a regular file is read, and at most a
bounded number of bytes of it.

A symlink met on the way is refused, or, where the caller allows it
(``follow_inside``), resolved *here*: its target is read with ``readlink`` and walked
the same way from the directories already open, so it is followed only while it stays
beneath the root (an absolute target, or ``..`` above the root, is refused). Whatever
the agent swaps in meanwhile, the walk never leaves the descriptors it holds.

Directories are listed through their descriptor (``os.scandir(fd)``). Names are ``str``
as Python's ``os`` gives them: bytes that are not UTF-8 arrive as lone surrogates
(``surrogateescape``); ``wire_name`` says how such a name is sent.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

import attr

from piserver.common.params import replace_lone_surrogates

# Symlinks followed in one walk before it is refused (the kernel's own limit).
MAX_LINKS = 40
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1024 * 1024


class Reason(enum.Enum):
    """Why a path was not opened or read."""

    MISSING = "missing"
    NOT_A_DIRECTORY = "not_a_directory"
    IS_A_DIRECTORY = "is_a_directory"
    # A FIFO, socket or device: never opened for reading.
    NOT_REGULAR = "not_regular"
    # A symlink where the caller follows none.
    SYMLINK = "symlink"
    # A symlink leading above the root or to an absolute path, or too many of them.
    LEADS_OUT = "leads_out"
    TOO_LARGE = "too_large"
    UNREADABLE = "unreadable"


@attr.s(auto_exc=True, str=False)
class Refused(Exception):
    """``path`` (relative to the root) was not opened or read, for ``reason``."""

    reason: Reason = attr.ib()
    path: str = attr.ib()
    detail: str = attr.ib(default="")

    def __str__(self) -> str:
        return f"{self.path!r}: {self.reason.value}{': ' + self.detail if self.detail else ''}"


class Kind(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"


@attr.frozen
class Entry:
    """One name in a directory, as ``lstat`` saw it (a symlink is not followed)."""

    name: str
    kind: Kind
    size: int | None = None
    # A symlink's target, as text (never followed here).
    target: str | None = None


@attr.frozen
class Opened:
    """A descriptor the walk ended on (the caller closes it) and what it is."""

    fd: int
    info: os.stat_result
    # The components the walk resolved to, beneath the root (symlinks replaced).
    parts: tuple[str, ...]


def open_root(path: str | os.PathLike, follow: bool = False) -> int:
    """A descriptor of the directory ``path`` the server itself chose (its last component
    is not followed if it is a symlink, unless ``follow``: a path the user gave)."""
    flags = _DIRECTORY & ~os.O_NOFOLLOW if follow else _DIRECTORY
    return os.open(os.fspath(path), flags)


@contextmanager
def root(path: str | os.PathLike, follow: bool = False) -> Iterator[int]:
    """``open_root`` as a context: the descriptor is closed afterwards."""
    fd = open_root(path, follow)
    try:
        yield fd
    finally:
        os.close(fd)


def open_directory(root_fd: int, relative: str, follow_inside: bool = False) -> Opened:
    """The directory ``relative`` beneath ``root_fd`` (``""``: the root itself)."""
    return _walk(root_fd, relative, want_file=False, follow_inside=follow_inside)


def open_regular(root_fd: int, relative: str, follow_inside: bool = False) -> Opened:
    """The regular file ``relative`` beneath ``root_fd``, opened for reading; a directory,
    FIFO, socket or device is refused without being read."""
    opened = _walk(root_fd, relative, want_file=True, follow_inside=follow_inside)
    mode = opened.info.st_mode
    if stat.S_ISREG(mode):
        return opened
    os.close(opened.fd)
    if stat.S_ISDIR(mode):
        raise Refused(Reason.IS_A_DIRECTORY, relative)
    raise Refused(Reason.NOT_REGULAR, relative)


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes from ``fd`` (one more than allowed says there is more),
    read in chunks: never more in memory than that, whatever size the file claims."""
    chunks = []
    left = limit + 1
    while left > 0:
        chunk = os.read(fd, min(_CHUNK, left))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_bytes(root_fd: int, relative: str, limit: int, follow_inside: bool = False) -> bytes:
    """The whole of regular file ``relative``; ``Refused(TOO_LARGE)`` past ``limit`` bytes."""
    opened = open_regular(root_fd, relative, follow_inside)
    try:
        data = read_at_most(opened.fd, limit)
    finally:
        os.close(opened.fd)
    if len(data) > limit:
        raise Refused(Reason.TOO_LARGE, relative, f"more than {limit} bytes")
    return data


def read_small(path: str | os.PathLike, limit: int = 4096) -> str:
    """The text of a small file the agent may have written (git's ``.git`` file,
    ``commondir``, ``gitdir``), named by a path the server holds: its last component
    not followed, a regular file only (a FIFO never blocks), at most ``limit`` bytes.
    Raises ``Refused``, ``OSError`` or ``UnicodeDecodeError``."""
    directory, name = os.path.split(os.fspath(path))
    with root(directory or ".", follow=True) as directory_fd:
        return read_bytes(directory_fd, name, limit).decode("utf-8")


def copy_limited(source, target, limit: int, relative: str = "") -> int:
    """Copy what is left of the binary file ``source`` to ``target``; bytes copied, or
    ``Refused(TOO_LARGE)`` once more than ``limit`` came (the caller removes ``target``)."""
    copied = 0
    while chunk := source.read(_CHUNK):
        copied += len(chunk)
        if copied > limit:
            raise Refused(Reason.TOO_LARGE, relative, f"more than {limit} bytes")
        target.write(chunk)
    return copied


def reader(opened: Opened):
    """A binary file object over ``opened``'s descriptor (closing it closes that)."""
    return os.fdopen(opened.fd, "rb")


def scan(directory_fd: int) -> list[Entry]:
    """The entries of an open directory, sorted by name; none is followed. An entry gone
    since the listing (the owner may be at work) is left out."""
    entries = []
    with os.scandir(directory_fd) as found:
        for item in found:
            try:
                info = item.stat(follow_symlinks=False)
                target = None
                if stat.S_ISLNK(info.st_mode):
                    target = os.readlink(item.name, dir_fd=directory_fd)
            except OSError:
                continue
            entries.append(_entry(item.name, info, target))
    entries.sort(key=lambda entry: entry.name)
    return entries


def wire_name(name: str) -> tuple[str, bool]:
    """``(text, replaced)``: a name as sent to a client. Each byte that was not UTF-8 (a
    lone surrogate here) becomes U+FFFD, and ``replaced`` says so: JSON must be UTF-8."""
    text = replace_lone_surrogates(name)
    return text, text != name


def _entry(name: str, info: os.stat_result, target: str | None) -> Entry:
    mode = info.st_mode
    if target is not None:
        return Entry(name, Kind.SYMLINK, target=target)
    if stat.S_ISDIR(mode):
        return Entry(name, Kind.DIRECTORY)
    if stat.S_ISREG(mode):
        return Entry(name, Kind.FILE, size=info.st_size)
    return Entry(name, Kind.OTHER)


def _walk(root_fd: int, relative: str, want_file: bool, follow_inside: bool) -> Opened:
    # The open directories from the root down, and their names: ".." pops one (never
    # the root), so a walk cannot climb above what it was given.
    stack = [os.dup(root_fd)]
    names: list[str] = []
    pending = [part for part in relative.split("/") if part not in ("", ".")]
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(stack) == 1:
                    raise Refused(Reason.LEADS_OUT, relative, "above the root")
                os.close(stack.pop())
                names.pop()
                continue
            last = not pending
            flags = _FILE if last and want_file else _DIRECTORY
            try:
                fd = os.open(name, flags, dir_fd=stack[-1])
            except OSError as error:
                if not _is_symlink(stack[-1], name):
                    raise _refusal(error, relative) from None
                if not follow_inside:
                    raise Refused(Reason.SYMLINK, relative) from None
                links += 1
                if links > MAX_LINKS:
                    raise Refused(Reason.LEADS_OUT, relative, "too many symlinks") from None
                target = _readlink(stack[-1], name, relative)
                if target.startswith("/"):
                    raise Refused(Reason.LEADS_OUT, relative, "an absolute symlink") from None
                pending[:0] = [part for part in target.split("/") if part not in ("", ".")]
                continue
            stack.append(fd)
            names.append(name)
        fd = stack.pop()
        info = os.fstat(fd)
        if not want_file and not stat.S_ISDIR(info.st_mode):
            os.close(fd)
            raise Refused(Reason.NOT_A_DIRECTORY, relative)
        return Opened(fd=fd, info=info, parts=tuple(names))
    finally:
        for fd in stack:
            os.close(fd)


def _is_symlink(directory_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _readlink(directory_fd: int, name: str, relative: str) -> str:
    try:
        return os.readlink(name, dir_fd=directory_fd)
    except OSError as error:
        # Swapped for something else since: as if it were gone.
        raise _refusal(error, relative) from None


def _refusal(error: OSError, relative: str) -> Refused:
    if error.errno == errno.ENOENT:
        return Refused(Reason.MISSING, relative)
    if error.errno == errno.ENOTDIR:
        return Refused(Reason.NOT_A_DIRECTORY, relative)
    if error.errno in (errno.ENXIO, errno.EOPNOTSUPP):
        # A socket (or a device without its driver): never read.
        return Refused(Reason.NOT_REGULAR, relative)
    if error.errno == errno.ELOOP:
        # A symlink swapped in between the open and the look at it.
        return Refused(Reason.SYMLINK, relative)
    return Refused(Reason.UNREADABLE, relative, error.strerror or "")
