"""common.safefs: walking a tree someone else controls without following its links."""

import os
import stat

import pytest

from piserver.common import safefs
from piserver.common.safefs import Kind, Reason, Refused


@pytest.fixture
def tree(tmp_path):
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "file.txt").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(b"server-token")
    return top


@pytest.fixture
def top_fd(tree):
    with safefs.root(tree) as fd:
        yield fd


def refused(reason, call, *args, **kwargs):
    with pytest.raises(Refused) as caught:
        call(*args, **kwargs)
    assert caught.value.reason is reason, caught.value
    return caught.value


def test_reads_a_regular_file_and_bounds_it(top_fd):
    assert safefs.read_bytes(top_fd, "a/b/file.txt", 6) == b"inside"
    refused(Reason.TOO_LARGE, safefs.read_bytes, top_fd, "a/b/file.txt", 5)
    opened = safefs.open_regular(top_fd, "a/./b//file.txt")
    try:
        assert safefs.read_at_most(opened.fd, 2) == b"ins"
        assert opened.parts == ("a", "b", "file.txt")
    finally:
        os.close(opened.fd)


@pytest.mark.parametrize("component", ["a", "a/b", "a/b/file.txt"])
def test_a_symlink_at_any_component_is_refused(tree, component, tmp_path):
    victim = tree / component
    aside = tmp_path / "aside"
    os.rename(victim, aside)
    # What the agent would do: point the name at something of the server's.
    os.symlink(tmp_path / "secret" if component.endswith(".txt") else tmp_path, victim)
    with safefs.root(tree) as fd:
        refused(Reason.SYMLINK, safefs.read_bytes, fd, "a/b/file.txt", 100)
        # Followed only inside, and an absolute target is never inside.
        refused(Reason.LEADS_OUT, safefs.read_bytes, fd, "a/b/file.txt", 100, follow_inside=True)


def test_a_relative_symlink_is_followed_only_while_inside(tree, top_fd):
    os.symlink("b/file.txt", tree / "a" / "same.txt")
    os.symlink("../../..", tree / "a" / "b" / "up")
    os.symlink("loop", tree / "loop")
    assert safefs.read_bytes(top_fd, "a/same.txt", 100, follow_inside=True) == b"inside"
    refused(Reason.SYMLINK, safefs.read_bytes, top_fd, "a/same.txt", 100)
    refused(Reason.LEADS_OUT, safefs.read_bytes, top_fd, "a/b/up/secret", 100, follow_inside=True)
    refused(Reason.LEADS_OUT, safefs.open_directory, top_fd, "loop", follow_inside=True)


def test_dotdot_never_climbs_above_the_root(top_fd):
    refused(Reason.LEADS_OUT, safefs.open_directory, top_fd, "a/../..")


def test_a_fifo_is_never_read(tree, top_fd):
    os.mkfifo(tree / "a" / "pipe")
    # O_NONBLOCK: the open does not wait for a writer; fstat refuses it before any read.
    refused(Reason.NOT_REGULAR, safefs.read_bytes, top_fd, "a/pipe", 100)
    refused(Reason.NOT_A_DIRECTORY, safefs.open_directory, top_fd, "a/pipe")


def test_a_device_and_a_socket_are_never_read(tree, top_fd):
    import socket

    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tree / "sock"))
        refused(Reason.NOT_REGULAR, safefs.read_bytes, top_fd, "sock", 100)
    # A device node needs CAP_MKNOD; the root's descriptor of /dev shows the same check.
    with safefs.root("/dev") as dev:
        refused(Reason.NOT_REGULAR, safefs.read_bytes, dev, "full", 100)
        refused(Reason.NOT_REGULAR, safefs.read_bytes, dev, "null", 100)


def test_missing_directory_and_file_answers(tree, top_fd):
    refused(Reason.MISSING, safefs.read_bytes, top_fd, "a/none", 100)
    refused(Reason.IS_A_DIRECTORY, safefs.read_bytes, top_fd, "a", 100)
    refused(Reason.NOT_A_DIRECTORY, safefs.open_directory, top_fd, "a/b/file.txt/x")


def test_scan_lists_without_following(tree, tmp_path):
    os.symlink(tmp_path, tree / "a" / "out")
    os.mkfifo(tree / "a" / "pipe")
    opened = safefs.open_directory(safefs.open_root(tree), "a")
    try:
        entries = safefs.scan(opened.fd)
    finally:
        os.close(opened.fd)
    assert entries == [
        safefs.Entry("b", Kind.DIRECTORY),
        safefs.Entry("out", Kind.SYMLINK, target=str(tmp_path)),
        safefs.Entry("pipe", Kind.OTHER),
    ]


def test_non_utf8_names(tree, top_fd):
    raw = os.path.join(os.fsencode(tree), b"\xff.txt")
    with open(raw, "wb") as f:
        f.write(b"x")
    (entry,) = [e for e in safefs.scan(top_fd) if e.kind is Kind.FILE]
    assert entry.name == os.fsdecode(b"\xff.txt")
    assert safefs.wire_name(entry.name) == ("\ufffd.txt", True)
    assert safefs.wire_name("plain é") == ("plain é", False)
    assert safefs.read_bytes(top_fd, entry.name, 10) == b"x"


def test_copy_limited_stops_past_the_limit(tree, top_fd, tmp_path):
    with safefs.reader(safefs.open_regular(top_fd, "a/b/file.txt")) as source:
        with open(tmp_path / "copy", "wb") as target:
            refused(Reason.TOO_LARGE, safefs.copy_limited, source, target, 3)
        source.seek(0)
        with open(tmp_path / "copy", "wb") as target:
            assert safefs.copy_limited(source, target, 6) == 6
    assert stat.S_ISREG(os.stat(tmp_path / "copy").st_mode)
