"""
The wire methods' parameter checks: the one set of primitives (``piserver.common.params``,
shared with the layers below) and what only requests have (which session a request is for).
Every handler in ``piserver.api`` checks its params with these.
"""

from piserver.common.errors import InvalidParams
from piserver.common.params import (
    boolean,
    check_text,
    choice,
    count,
    natural,
    obj,
    string,
    strings,
    text,
)

__all__ = [
    "boolean",
    "check_text",
    "choice",
    "count",
    "images",
    "natural",
    "obj",
    "session_id",
    "string",
    "strings",
    "target_session_id",
    "text",
]


def images(params: dict, key: str) -> list[dict] | None:
    """A list of pi image objects (None when absent); pi checks what is in them."""
    value = params.get(key)
    if value is not None and (
        not isinstance(value, list) or not all(isinstance(i, dict) for i in value)
    ):
        raise InvalidParams(f'"{key}" must be a list of image objects')
    return value


def session_id(request) -> str | None:
    """Agent calls take the session from the envelope; params.sessionId also works."""
    return request.session_id or request.params.get("sessionId")


def target_session_id(request) -> str | None:
    """``session.*`` methods name their target in params; the envelope names the client's
    current session, which can be another one (the seed's app does so)."""
    target = request.params.get("sessionId")
    if target is not None and not isinstance(target, str):
        raise InvalidParams('"sessionId" must be a string')
    return target or request.session_id
