"""
The file list of a diff, from git's ``--name-status -z`` and ``--numstat -z``
output, and the cut of its text at a byte limit.
"""

STATUS_NAMES = {
    "A": "added",
    "M": "modified",
    "D": "deleted",
    "R": "renamed",
    "C": "added",
    "T": "modified",
}


def _name_status(output: str) -> list[tuple[str, str, str | None]]:
    """``(status letter, path, old path or None)`` for each file."""
    fields = output.split("\0")
    files = []
    index = 0
    while index < len(fields) and fields[index]:
        letter = fields[index][0]
        if letter in "RC":
            files.append((letter, fields[index + 2], fields[index + 1]))
            index += 3
        else:
            files.append((letter, fields[index + 1], None))
            index += 2
    return files


def _numstat(output: str) -> dict[str, tuple[int, int] | None]:
    """Added and deleted lines by (new) path; None for a binary file."""
    fields = output.split("\0")
    counts = {}
    index = 0
    while index < len(fields) and fields[index]:
        added, deleted, path = fields[index].split("\t", 2)
        if path:
            index += 1
        else:  # a rename or copy: the old and new paths follow
            path = fields[index + 2]
            index += 3
        counts[path] = None if added == "-" else (int(added), int(deleted))
    return counts


def file_list(name_status: str, numstat: str) -> list[dict]:
    """``[{path, oldPath?, status, additions, deletions}]`` in git's order."""
    counts = _numstat(numstat)
    files = []
    for letter, path, old_path in _name_status(name_status):
        lines = counts.get(path, (0, 0))
        entry = {"path": path}
        if letter == "R":
            entry["oldPath"] = old_path
        entry["status"] = "binary" if lines is None else STATUS_NAMES.get(letter, "modified")
        entry["additions"], entry["deletions"] = lines or (0, 0)
        files.append(entry)
    return files


def cut(text: bytes, max_bytes: int) -> tuple[str, bool]:
    """``text`` as a string of at most ``max_bytes`` UTF-8 bytes, and whether it was cut."""
    if len(text) <= max_bytes:
        return text.decode("utf-8", "replace"), False
    end = max_bytes
    # A character cut in two at the limit is left out, not shown as U+FFFD.
    while end > max_bytes - 3 and end > 0 and text[end] & 0xC0 == 0x80:
        end -= 1
    return text[:end].decode("utf-8", "replace"), True
