"""
Checking frames against the published protocol schema (piserver/schema/protocol.json).
``tests/support/wsclient.py`` checks every frame it receives and records what does not
validate in ``VIOLATIONS``; an autouse fixture (tests/conftest.py) fails the test then.
"""

from functools import cache

from jsonschema import Draft202012Validator

from piserver.schema import load

SCHEMA = load()
# (problem, frame) of every received frame that did not validate, since the test began.
VIOLATIONS: list[tuple[str, dict]] = []


@cache
def _validator(*path: str) -> Draft202012Validator:
    """The validator of the schema at ``path`` in the document (none: the whole
    document), with the document's $defs for its references."""
    if not path:
        return Draft202012Validator(SCHEMA)
    node = SCHEMA
    for key in path:
        node = node[key]
    return Draft202012Validator({**node, "$defs": SCHEMA["$defs"]})


def _messages(validator, instance, where: str) -> list[str]:
    return [
        f"{where}{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def frame_problems(frame, method: str | None = None) -> list[str]:
    """What is wrong with a frame the server sent (``method``: of the request a response
    answers, when known); [] when it validates."""
    problems = _messages(_validator(), frame, "")
    if problems or not isinstance(frame, dict):
        return problems
    if frame["kind"] == "response" and frame["ok"] and method in SCHEMA["methods"]:
        return _messages(
            _validator("methods", method, "result"), frame["result"], f"result of {method}: "
        )
    if frame["kind"] == "event":
        if frame["payload"]["type"] != frame["type"]:
            return [f"payload type {frame['payload']['type']!r} is not {frame['type']!r}"]
        if frame["type"] in SCHEMA["events"]:
            return _messages(
                _validator("events", frame["type"]), frame["payload"], f"{frame['type']} payload: "
            )
    return []


def params_problems(method: str, params: dict) -> list[str]:
    return _messages(_validator("methods", method, "params"), params, f"{method} params: ")


def check_received(frame, method: str | None = None) -> None:
    for problem in frame_problems(frame, method):
        VIOLATIONS.append((problem, frame))
