"""piserver.repos' pure parts: path confinement, file reads, git's file lists."""

import os

import pytest

from piserver.common.errors import InvalidParams, NotFound
from piserver.repos.changes import cut, file_list
from piserver.repos.paths import list_directory, read_file, relative_path
from piserver.repos.shipping import parse_author


@pytest.fixture
def checkout(tmp_path):
    top = tmp_path / "repo"
    (top / ".git").mkdir(parents=True)
    (top / "src").mkdir()
    (top / "src" / "app.py").write_text("x = 1\n")
    (tmp_path / "outside.txt").write_text("secret\n")
    return top


@pytest.mark.parametrize(
    "path, expected",
    [
        ("", ""),
        (".", ""),
        ("src//app.py", "src/app.py"),
        ("./src/./app.py", "src/app.py"),
        ("a.git/x", "a.git/x"),
    ],
)
def test_relative_paths(path, expected):
    assert relative_path(path) == expected


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("/etc/passwd", "absolute"),
        ("..", '".."'),
        ("src/../../x", '".."'),
        (".git/config", ".git"),
        ("sub/.git/HEAD", ".git"),
        ("a\0b", "NUL"),
        (7, "string"),
    ],
)
def test_refused_paths(path, fragment):
    with pytest.raises(InvalidParams, match=fragment):
        relative_path(path)


def test_symlinks_are_followed_only_inside(checkout, tmp_path):
    os.symlink("src/app.py", checkout / "inside.py")
    os.symlink(str(tmp_path / "outside.txt"), checkout / "out.txt")
    os.symlink("..", checkout / "up")
    os.symlink(".git", checkout / "git-dir")
    (checkout / ".git" / "config").write_text("[core]\n")
    assert read_file(checkout, "inside.py")["content"] == "x = 1\n"
    for path in ("out.txt", "up/outside.txt", "git-dir/config"):
        with pytest.raises(InvalidParams):
            read_file(checkout, path)


def test_non_utf8_names_are_sent_replaced_and_marked(checkout):
    os.mkdir(os.path.join(os.fsencode(checkout), b"d\xff"))
    with open(os.path.join(os.fsencode(checkout), b"d\xff", b"\xfe.txt"), "wb") as f:
        f.write(b"hi")
    listing = list_directory(checkout, "")
    entry = [e for e in listing["entries"] if e["type"] == "directory" and e["name"] != "src"]
    assert entry == [
        {"name": "d\ufffd", "path": "d\ufffd", "type": "directory", "nameReplaced": True}
    ]
    inner = list_directory(checkout, os.fsdecode(b"d\xff"))
    assert inner["entries"][0]["name"] == "\ufffd.txt"
    assert inner["entries"][0]["nameReplaced"] is True


def test_listing_hides_git_and_reports_types(checkout):
    os.symlink("src", checkout / "link")
    listing = list_directory(checkout, "")
    assert listing == {
        "path": "",
        "truncated": False,
        "entries": [
            {"name": "link", "path": "link", "type": "symlink", "target": "src"},
            {"name": "src", "path": "src", "type": "directory"},
        ],
    }
    assert list_directory(checkout, "link")["entries"][0]["path"] == "link/app.py"
    with pytest.raises(NotFound):
        list_directory(checkout, "missing")
    with pytest.raises(InvalidParams, match="is a file"):
        list_directory(checkout, "src/app.py")


def test_read_file_text_binary_and_cut(checkout):
    (checkout / "utf8.txt").write_text("héllo")
    (checkout / "latin1.txt").write_bytes("héllo".encode("latin-1"))
    (checkout / "nul.bin").write_bytes(b"a\0b")
    assert read_file(checkout, "utf8.txt") == {
        "path": "utf8.txt",
        "size": 6,
        "content": "héllo",
        "truncated": False,
    }
    # A cut through "é" leaves the whole character out.
    assert read_file(checkout, "utf8.txt", max_bytes=2)["content"] == "h"
    assert read_file(checkout, "latin1.txt") == {"path": "latin1.txt", "size": 5, "binary": True}
    assert read_file(checkout, "nul.bin")["binary"] is True
    with pytest.raises(InvalidParams, match="directory"):
        read_file(checkout, "src")
    with pytest.raises(NotFound):
        read_file(checkout, "missing.txt")


def test_file_list_from_git_output():
    name_status = "\x00".join(
        [
            "M",
            "a.py",
            "A",
            "new.txt",
            "D",
            "gone.txt",
            "R087",
            "old.md",
            "new.md",
            "A",
            "pic.png",
            "",
        ]
    )
    numstat = "\x00".join(
        [
            "3\t1\ta.py",
            "2\t0\tnew.txt",
            "0\t4\tgone.txt",
            "1\t1\t",
            "old.md",
            "new.md",
            "-\t-\tpic.png",
            "",
        ]
    )
    assert file_list(name_status, numstat) == [
        {"path": "a.py", "status": "modified", "additions": 3, "deletions": 1},
        {"path": "new.txt", "status": "added", "additions": 2, "deletions": 0},
        {"path": "gone.txt", "status": "deleted", "additions": 0, "deletions": 4},
        {
            "path": "new.md",
            "oldPath": "old.md",
            "status": "renamed",
            "additions": 1,
            "deletions": 1,
        },
        {"path": "pic.png", "status": "binary", "additions": 0, "deletions": 0},
    ]
    assert file_list("", "") == []


def test_cut_keeps_whole_characters():
    assert cut(b"abc", 10) == ("abc", False)
    assert cut("aé€".encode(), 4) == ("aé", True)
    assert cut("aé€".encode(), 3) == ("aé", True)
    assert cut("€".encode(), 1) == ("", True)


def test_parse_author():
    assert parse_author("Ada Lovelace <ada@example.org>") == ("Ada Lovelace", "ada@example.org")
    for bad in ("ada@example.org", "<ada@example.org>", "Ada <a b@c>", "Ada <x> <y>"):
        with pytest.raises(ValueError):
            parse_author(bad)
