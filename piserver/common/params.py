"""
The one set of parameter checks: every layer that reads a client's params builds on these.

Each check takes the params object and a key, and returns the value or raises
:class:`InvalidParams` with a message naming the key. "Text" has one meaning
everywhere: a string with no NUL and no lone surrogate, so that it can go
anywhere the server puts it (pi's stdin, a JSON file, a log, git).
"""

import re

from piserver.common.errors import InvalidParams

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _name(key: str, where: str) -> str:
    return f"{where}.{key}" if where else key


def check_text(value: str, name: str) -> str:
    """``value`` if it is text: no NUL and no lone surrogate (JSON allows ``"\\ud800"``,
    UTF-8 does not)."""
    if "\x00" in value:
        raise InvalidParams(f'"{name}" must not contain NUL characters')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParams(f'"{name}" must be valid Unicode text (a lone surrogate?)') from None
    return value


def replace_lone_surrogates(value: str) -> str:
    """``value`` with every lone surrogate (a byte that was not UTF-8, as Python's
    ``surrogateescape`` carries it) replaced by U+FFFD: text that has a UTF-8 form."""
    return _LONE_SURROGATE.sub("\ufffd", value)


def string(
    params: dict, key: str, required: bool = True, where: str = "", what: str = " (a string)"
) -> str | None:
    """A string (None when absent and not ``required``); ``what`` says what a missing
    one should have been."""
    value = params.get(key)
    name = _name(key, where)
    if value is None:
        if required:
            raise InvalidParams(f'missing "{name}"{what}')
        return None
    if not isinstance(value, str):
        raise InvalidParams(f'"{name}" must be a string')
    return value


def text(
    params: dict,
    key: str,
    required: bool = True,
    nonempty: bool = False,
    where: str = "",
    what: str = " (a string)",
    empty: str = "must not be empty",
) -> str | None:
    """A :func:`string` that is text; with ``nonempty``, not blank either (``empty`` says
    what it must be instead)."""
    value = string(params, key, required, where, what)
    if value is None:
        return None
    name = _name(key, where)
    if nonempty and not value.strip():
        raise InvalidParams(f'"{name}" {empty}')
    return check_text(value, name)


def obj(params: dict, key: str, required: bool = True, where: str = "") -> dict | None:
    """A JSON object (None when absent and not ``required``)."""
    value = params.get(key)
    name = _name(key, where)
    if value is None:
        if required:
            raise InvalidParams(f'missing "{name}" (an object)')
        return None
    if not isinstance(value, dict):
        raise InvalidParams(f'"{name}" must be an object')
    return value


def boolean(params: dict, key: str, default: bool | None = None) -> bool | None:
    """true or false (``default`` when absent)."""
    value = params.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidParams(f'"{key}" must be true or false')
    return value


def natural(params: dict, key: str) -> int | None:
    """A non-negative integer (None when absent)."""
    value = params.get(key)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise InvalidParams(f'"{key}" must be a non-negative integer')
    return value


def count(params: dict, key: str, default: int, low: int, high: int) -> int:
    """An integer from ``low`` to ``high`` (``default`` when absent)."""
    value = params.get(key)
    if value is None:
        return default
    if type(value) is not int or not low <= value <= high:
        raise InvalidParams(f'"{key}" must be an integer from {low} to {high}')
    return value


def choice(
    params: dict, key: str, choices, default=None, message: str | None = None, required=False
):
    """One of ``choices`` (``default`` when absent, else None unless ``required``)."""
    value = params.get(key, default)
    if value is None and default is None and not required:
        return None
    if value not in choices:
        raise InvalidParams(message or f'"{key}" must be one of {", ".join(map(repr, choices))}')
    return value


def strings(params: dict, key: str, default=()) -> list[str]:
    """A list of strings (``default`` when absent)."""
    value = params.get(key, default)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidParams(f'"{key}" must be a list of strings')
    return list(value)
