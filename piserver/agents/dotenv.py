"""
The data dir's ``.env``: ``KEY=VALUE`` lines handed to every agent's environment.

Values are secrets (API keys), so a problem is reported by line number and a
reason only: never the value, never the line's text, never even the key of a
line whose key is malformed (it may be a value pasted in the wrong place).

Supported: ``KEY=VALUE``, an optional ``export`` prefix, whitespace around the
key and ``=``, ``'single'`` quotes (literal), ``"double"`` quotes (``\\n``,
``\\"`` and ``\\\\`` escapes; any other backslash is kept as written), ``#``
comment lines, ``#`` comments after an unquoted value when preceded by
whitespace, blank lines, CRLF line endings and a leading BOM. There is no
variable expansion and no multi-line value. A key given twice keeps its last
value.
"""

import os
import re

import attr

from piserver.common.files import loose_mode

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_EXPORT = re.compile(r"export[ \t]+")
_DOUBLE_QUOTE_ESCAPES = {"n": "\n", '"': '"', "\\": "\\"}
# Lone surrogates come from bytes that were not UTF-8 (decoded with surrogateescape).
_SURROGATE = re.compile("[\ud800-\udfff]")


@attr.frozen
class DotenvProblem:
    """A line that was skipped (``line`` counts from 1), or a warning about the
    whole file (``line`` is None)."""

    line: int | None
    reason: str

    def __str__(self) -> str:
        if self.line is None:
            return self.reason
        return f"line {self.line}: {self.reason}"


class _Malformed(Exception):
    """A line could not be parsed; the message is the reason, free of values."""


def parse_dotenv(text: str) -> tuple[dict[str, str], list[DotenvProblem]]:
    """Parse ``.env`` text into its variables and the problems of the lines skipped."""
    variables: dict[str, str] = {}
    problems: list[DotenvProblem] = []
    text = text.removeprefix("\ufeff")
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        try:
            entry = _parse_line(line)
        except _Malformed as malformed:
            problems.append(DotenvProblem(line=number, reason=str(malformed)))
            continue
        if entry is not None:
            key, value = entry
            variables[key] = value
    return variables, problems


def load_dotenv(path: str | os.PathLike) -> tuple[dict[str, str], list[DotenvProblem]]:
    """
    Read and parse the ``.env`` at ``path``.

    A missing file gives no variables and no problems. A file that group or
    others can access gets a file-level problem (``line`` None) so the caller
    can warn about it; its variables are still loaded. Any other read error
    (a directory, no permission) is raised as ``OSError``.
    """
    try:
        with open(path, "rb") as dotenv_file:
            mode = loose_mode(dotenv_file.fileno())
            data = dotenv_file.read()
    except FileNotFoundError:
        return {}, []
    variables, problems = parse_dotenv(data.decode("utf-8", errors="surrogateescape"))
    if mode is not None:
        problems.insert(
            0,
            DotenvProblem(
                line=None,
                reason=f"file mode {mode:04o} is looser than 0600 (run chmod 600 on it)",
            ),
        )
    return variables, problems


def _parse_line(line: str) -> tuple[str, str] | None:
    """``(key, value)`` for an assignment, None for a blank or comment line."""
    if _SURROGATE.search(line):
        raise _Malformed("not valid UTF-8")
    stripped = line.lstrip(" \t")
    if not stripped or stripped.startswith("#"):
        return None
    export = _EXPORT.match(stripped)
    if export is not None and "=" in stripped[export.end() :]:
        stripped = stripped[export.end() :]
    key, equals, rest = stripped.partition("=")
    if not equals:
        raise _Malformed("expected KEY=VALUE, found no '='")
    key = key.rstrip(" \t")
    if not _KEY.match(key):
        raise _Malformed("invalid key name (must match [A-Za-z_][A-Za-z0-9_]*)")
    value = _parse_value(rest)
    if "\0" in value:
        raise _Malformed(f"the value of {key} contains a NUL character")
    return key, value


def _parse_value(rest: str) -> str:
    """The value from the text after ``=``."""
    value = rest.lstrip(" \t")
    if value.startswith('"'):
        unquoted, end = _double_quoted(value)
    elif value.startswith("'"):
        end = value.find("'", 1)
        if end == -1:
            raise _Malformed("unterminated single quote")
        unquoted, end = value[1:end], end + 1
    else:
        return _strip_inline_comment(rest).strip(" \t")
    trailing = value[end:].lstrip(" \t")
    if trailing and not trailing.startswith("#"):
        raise _Malformed("unexpected text after the closing quote")
    return unquoted


def _double_quoted(value: str) -> tuple[str, int]:
    """The unescaped content of a value starting with ``"``, and the index after
    its closing quote."""
    parts = []
    index = 1
    while index < len(value):
        char = value[index]
        if char == '"':
            return "".join(parts), index + 1
        if char == "\\" and index + 1 < len(value):
            following = value[index + 1]
            parts.append(_DOUBLE_QUOTE_ESCAPES.get(following, "\\" + following))
            index += 2
            continue
        parts.append(char)
        index += 1
    raise _Malformed("unterminated double quote")


def _strip_inline_comment(raw: str) -> str:
    """Cut an unquoted value at the first ``#`` that follows whitespace."""
    for index in range(1, len(raw)):
        if raw[index] == "#" and raw[index - 1] in " \t":
            return raw[:index]
    return raw
