"""``write_bytes_atomic(..., skip_unchanged=True)``: a file that already holds the bytes
(and mode) is left alone; anything else is replaced as always."""

import os

from piserver.common.files import write_bytes_atomic, write_json_atomic


def test_an_unchanged_file_is_left_alone_and_a_changed_one_replaced(tmp_path):
    path = tmp_path / "mode.json"
    write_json_atomic(path, {"mode": "full"}, mode=0o644)
    inode = os.stat(path).st_ino
    write_json_atomic(path, {"mode": "full"}, mode=0o644, skip_unchanged=True)
    assert os.stat(path).st_ino == inode
    # Other bytes, another mode: replaced.
    write_json_atomic(path, {"mode": "ask"}, mode=0o644, skip_unchanged=True)
    assert os.stat(path).st_ino != inode and b'"ask"' in path.read_bytes()
    inode = os.stat(path).st_ino
    write_json_atomic(path, {"mode": "ask"}, mode=0o600, skip_unchanged=True)
    assert os.stat(path).st_ino != inode and os.stat(path).st_mode & 0o777 == 0o600


def test_a_link_or_a_fifo_in_its_place_is_replaced_not_read(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"data")
    os.chmod(target, 0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    write_bytes_atomic(link, b"data", skip_unchanged=True)
    assert not link.is_symlink() and target.read_bytes() == b"data"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    write_bytes_atomic(fifo, b"", skip_unchanged=True)
    assert fifo.is_file()
