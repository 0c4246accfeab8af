"""
The wire envelope: parse incoming frames into frozen values, encode replies and events.

Requests: ``{v: 1, kind: "request", id, sessionId?, method, params?}``.
Responses: ``{v: 1, kind: "response", id, sessionId?, ok, repeat?, result | error}``
(``repeat: true``: the answer a request with the same idempotency key got).
Events: ``{v: 1, kind: "event", sessionId, seq, type, payload}``.
"""

import functools
import json
import re

import attr

from piserver.common.errors import InvalidRequest, ParseError, RpcError
from piserver.common.params import replace_lone_surrogates

PROTOCOL_VERSION = 1


@attr.frozen
class Request:
    id: str
    method: str
    params: dict
    session_id: str | None


@attr.s(auto_exc=True)
class BadFrame(Exception):
    """
    A frame that is not a valid request. It is still answered: ``request_id``
    (and ``session_id``) are echoed when they could be read, else ``None``.
    """

    error: RpcError = attr.ib()
    request_id: str | None = attr.ib(default=None)
    session_id: str | None = attr.ib(default=None)


def _reject_constant(name):
    # NaN and Infinity are not JSON; Python's parser would accept them.
    raise ValueError(f"{name} is not valid JSON")


def decode_json(payload: bytes):
    """Strict JSON decoding of a UTF-8 frame; raises ParseError saying what was wrong."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"frame is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ParseError("frame is not valid JSON: nested too deeply") from None
    except ValueError as e:
        # JSONDecodeError is a ValueError; so is an integer too long to convert.
        raise ParseError(f"frame is not valid JSON: {_short(str(e))}") from None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def parse_request(payload: bytes) -> Request:
    """Parse one frame (text or binary: both carry the JSON envelope)."""
    try:
        obj = decode_json(payload)
    except ParseError as e:
        raise BadFrame(e) from None
    if not isinstance(obj, dict):
        raise BadFrame(InvalidRequest(f"envelope must be a JSON object, not {_json_type(obj)}"))

    request_id = obj.get("id")
    session_id = obj.get("sessionId")
    echo_id = request_id if isinstance(request_id, str) else None
    echo_session = session_id if isinstance(session_id, str) else None

    def bad(message):
        return BadFrame(InvalidRequest(message), echo_id, echo_session)

    if "v" not in obj:
        raise bad('missing "v" (protocol version); expected 1')
    if type(obj["v"]) is not int or obj["v"] != PROTOCOL_VERSION:
        raise bad(f"unsupported protocol version {_short(json.dumps(obj['v']), 40)}; expected 1")
    if obj.get("kind") != "request":
        raise bad('"kind" must be "request"')
    if "id" not in obj:
        raise bad('missing "id"')
    if not isinstance(request_id, str):
        raise bad(f'"id" must be a string, not {_json_type(request_id)}')
    method = obj.get("method")
    if "method" not in obj:
        raise bad('missing "method"')
    if not isinstance(method, str):
        raise bad(f'"method" must be a string, not {_json_type(method)}')
    if session_id is not None and not isinstance(session_id, str):
        raise bad(f'"sessionId" must be a string, not {_json_type(session_id)}')
    params = obj.get("params")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise bad(f'"params" must be an object, not {_json_type(params)}')
    return Request(id=request_id, method=method, params=params, session_id=session_id)


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _dumps(obj) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (an id sent as "\ud800") has no UTF-8 form: escape everything.
        # (pi's events are relayed as pi wrote them, escapes included, and the journal
        # rebuilds them byte for byte from this encoding.)
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _dumps_answer(envelope: dict) -> bytes:
    """A response: as ``_dumps``, but a lone surrogate in the result or error (bytes that
    were not UTF-8, pi's text) becomes U+FFFD; the request's id and sessionId are echoed as
    they came (a client matches its answers by them)."""
    text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        cleaned = {
            key: value if key in ("id", "sessionId") else _replace_surrogates(value)
            for key, value in envelope.items()
        }
        return json.dumps(cleaned, separators=(",", ":")).encode("ascii")


def _replace_surrogates(value):
    if isinstance(value, str):
        return replace_lone_surrogates(value)
    if isinstance(value, dict):
        return {
            replace_lone_surrogates(key) if isinstance(key, str) else key: _replace_surrogates(v)
            for key, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_replace_surrogates(item) for item in value]
    return value


def encode_result(
    request_id: str, result: dict, session_id: str | None = None, repeat: bool = False
) -> bytes:
    envelope = {"v": PROTOCOL_VERSION, "kind": "response", "id": request_id}
    if session_id is not None:
        envelope["sessionId"] = session_id
    envelope["ok"] = True
    if repeat:
        envelope["repeat"] = True
    envelope["result"] = result
    return _dumps_answer(envelope)


def encode_error(
    request_id: str | None, error: RpcError, session_id: str | None = None, repeat: bool = False
) -> bytes:
    envelope = {"v": PROTOCOL_VERSION, "kind": "response", "id": request_id}
    if session_id is not None:
        envelope["sessionId"] = session_id
    envelope["ok"] = False
    if repeat:
        envelope["repeat"] = True
    envelope["error"] = error.to_dict()
    return _dumps_answer(envelope)


def encode_event(session_id: str, seq: int, event_type: str, payload_json: bytes) -> bytes:
    """
    Build an event envelope around an already-encoded payload, so that pi's
    event lines (which can be many MB) are relayed without re-encoding.
    """
    # What _dumps of the envelope would give, put together from its pieces: this runs
    # for every event sent.
    return b"".join(
        (
            _EVENT_HEAD,
            _json_string(session_id),
            b',"seq":',
            str(seq).encode("ascii"),
            b',"type":',
            _json_string(event_type),
            b',"payload":',
            payload_json,
            b"}",
        )
    )


_EVENT_HEAD = b'{"v":%d,"kind":"event","sessionId":' % PROTOCOL_VERSION
_SEQ_AND_TYPE = re.compile(r',"seq":(\d+),"type":')
EVENT_TOO_LARGE = "event_too_large"


def event_too_large(frame: bytes, limit: int) -> bytes | None:
    """In place of event ``frame``, larger than ``limit``: a small event at the same seq,
    of type ``event_too_large``, naming the event's type, its size and the limit (None if
    ``frame`` is no event ``encode_event`` made)."""
    if not frame.startswith(_EVENT_HEAD):
        return None
    head = frame[len(_EVENT_HEAD) : len(_EVENT_HEAD) + 4096].decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    try:
        session_id, end = decoder.raw_decode(head)
        found = _SEQ_AND_TYPE.match(head, end)
        event_type, _ = decoder.raw_decode(head, found.end())
    except (ValueError, AttributeError):
        return None
    payload = {"type": EVENT_TOO_LARGE, "eventType": event_type, "size": len(frame), "limit": limit}
    return encode_event(session_id, int(found.group(1)), EVENT_TOO_LARGE, _dumps(payload))


@functools.lru_cache(maxsize=1024)
def _json_string(text: str) -> bytes:
    """A session id or event type as JSON (they are few, and repeat)."""
    return _dumps(text)


def encode_payload(payload) -> bytes:
    return _dumps(payload)


def extended_object(object_json: bytes, fields: dict) -> bytes | None:
    """
    A non-empty JSON object's bytes with ``fields`` (keys it does not have) added at its
    end, as ``{**object, **fields}`` would be encoded: the object is not decoded and
    encoded again. None when ``object_json`` does not end with the object's brace.
    """
    if not object_json.endswith(b"}"):
        return None
    if not fields:
        return object_json
    return object_json[:-1] + b"," + _dumps(fields)[1:]
