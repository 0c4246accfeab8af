"""
The bytes of the session journal: segments, records, and the compact message updates
of pi 0.x (see piserver.sessions.journal for the files, retention and recovery).

Segments and records
--------------------
A segment is the 8-byte magic ``pijrnl\\0\\1`` followed by records::

    u32 body length | u32 CRC-32 of the body | body
    body = u64 seq | f64 time | u8 kind | u16 type length | event type (UTF-8) | rest

(little-endian; ``time`` is the clock's ``seconds()`` at append, for retention by
age). ``kind`` says what ``rest`` holds:

- 0, verbatim: the event's JSON exactly as it was given (``payload_json``).
- 1, message update: ``u32 n | delta JSON (n bytes) | rebuild JSON``.

pi 1.x sends deltas only: its updates, like every other event, are stored verbatim,
as pi wrote them, so that journaling a streamed answer encodes nothing (it is the
relay's hot path), and replayed byte for byte. What delta mode leaves out of them,
the ``usage`` so far that pi repeats on every update (see :func:`strip_message_update`),
is taken out when a delta-mode replay reads them.

Compact message updates (pi 0.x)
--------------------------------
pi 0.x sent every ``message_update`` with the whole message so far, twice
(``message`` and ``assistantMessageEvent.partial``). Such an update (one that carries
either field) is stored as kind 1: its *delta form* (the event without those two
fields), kept as ready-to-send JSON for delta-mode replay, plus a *rebuild* JSON
``[message slot, partial slot]``. A slot is ``null`` when the field is absent, else
``[key position, op]``: the ``message`` op is a structural diff against the message
of the previous message update of the same segment (``null``: unchanged); the
``partial`` op is ``null`` when ``partial`` equals that message, else ``[0, value]``.
The first such update of a segment holds the whole message (a keyframe), so every
segment decodes on its own. Journals written then are still read.

Diff ops: ``[0, value]`` replaces; ``[1, suffix]`` appends to a string;
``[2, {key: op}, [removed keys]]`` patches an object (new keys last, in order);
``[3, length, [[index, op], ...], [appended items]]`` patches an array. Values
compare strictly (``true`` is not ``1``) and an object whose key order a patch
could not reproduce is replaced whole, so replay gives back equal JSON with the
same key order (not byte-identical: replayed updates are compact JSON).
"""

import json
import struct
import zlib

from piserver.wire.envelope import encode_payload

FULL = "full"
DELTA = "delta"
MODES = (FULL, DELTA)

MAGIC = b"pijrnl\x00\x01"
_RECORD_HEADER = struct.Struct("<II")
_BODY_HEADER = struct.Struct("<QdBH")
_DELTA_LENGTH = struct.Struct("<I")
VERBATIM = 0
UPDATE = 1

_SET, _APPEND, _PATCH_OBJECT, _PATCH_ARRAY = 0, 1, 2, 3
NO_BASE = object()
"""Diff base before the first message update of a segment: differs from every value."""


class CorruptRecord(Exception):
    """A segment read for replay does not decode (changed on disk since open)."""


def strip_message_update(payload: dict) -> dict:
    """The delta form of a ``message_update`` event: without ``usage``, ``message`` and
    ``assistantMessageEvent.partial``. A new dict (and a new ``assistantMessageEvent``
    when one was stripped); ``payload`` is not changed."""
    event = _split_update(payload)[0]
    # pi 1.x repeats the usage so far on every update; message_end has the final one.
    event.pop("usage", None)
    return event


def carries_message(payload: dict) -> bool:
    """Whether an update has the ``message`` or ``partial`` of pi 0.x."""
    if "message" in payload:
        return True
    inner = payload.get("assistantMessageEvent")
    return isinstance(inner, dict) and "partial" in inner


def _split_update(payload: dict):
    """(event without message and partial, message position or None, message, partial
    position or None, partial)."""
    message_at = partial_at = None
    message = partial = None
    if "message" in payload:
        message_at = list(payload).index("message")
        message = payload["message"]
    event = {key: value for key, value in payload.items() if key != "message"}
    inner = payload.get("assistantMessageEvent")
    if isinstance(inner, dict) and "partial" in inner:
        partial_at = list(inner).index("partial")
        partial = inner["partial"]
        event["assistantMessageEvent"] = {
            key: value for key, value in inner.items() if key != "partial"
        }
    return event, message_at, message, partial_at, partial


def _delta_form(event_type: str, payload_json: bytes) -> bytes:
    """A stored update's JSON without the usage delta mode leaves out."""
    if event_type != "message_update" or b'"usage"' not in payload_json:
        return payload_json
    try:
        event = json.loads(payload_json)
    except ValueError as error:
        raise CorruptRecord(f"undecodable message update: {error!r}") from None
    if not isinstance(event, dict) or "usage" not in event:
        return payload_json
    del event["usage"]
    return encode_payload(event)


_SHARED = "\x00pi-journal:shared message\x00"
_SHARED_JSON = json.dumps(_SHARED)


def _dumps_sharing(event: dict, shared) -> bytes | None:
    """``encode_payload`` of ``event`` whose two :data:`_SHARED` placeholders stand for
    ``shared``, encoding ``shared`` once; None when that cannot be done safely (the
    placeholder's text also occurs in the event, a lone surrogate)."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    if text.count(_SHARED_JSON) != 2:
        return None
    shared_text = json.dumps(shared, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.replace(_SHARED_JSON, shared_text).encode("utf-8")
    except UnicodeEncodeError:
        return None


def _diff(old, new):
    """The op turning ``old`` into ``new``, or None when they are the same JSON."""
    kind = type(new)
    if type(old) is not kind:
        return [_SET, new]
    if kind is dict:
        return _diff_object(old, new)
    if kind is list:
        return _diff_array(old, new)
    if old == new:
        return None
    if kind is str and new.startswith(old):
        return [_APPEND, new[len(old) :]]
    return [_SET, new]


def _diff_object(old: dict, new: dict):
    changes = {}
    kept = 0
    for key, value in new.items():
        if key not in old:
            changes[key] = [_SET, value]
            continue
        kept += 1
        previous = old[key]
        kind = type(value)
        # Inlined fast path for equal scalars: most of a message is unchanged.
        if type(previous) is kind and kind is not dict and kind is not list and previous == value:
            continue
        op = _diff(previous, value)
        if op is not None:
            changes[key] = op
    removed = [key for key in old if key not in new] if kept < len(old) else []
    if list(old) != list(new):
        # A patch keeps the surviving keys in place and appends new ones.
        patched_order = [key for key in old if key in new]
        patched_order.extend(key for key in new if key not in old)
        if patched_order != list(new):
            return [_SET, new]
    if removed:
        return [_PATCH_OBJECT, changes, removed]
    if changes:
        return [_PATCH_OBJECT, changes]
    return None


def _diff_array(old: list, new: list):
    changes = []
    for index in range(min(len(old), len(new))):
        previous, value = old[index], new[index]
        kind = type(value)
        if type(previous) is kind and kind is not dict and kind is not list and previous == value:
            continue
        op = _diff(previous, value)
        if op is not None:
            changes.append([index, op])
    if not changes and len(old) == len(new):
        return None
    return [_PATCH_ARRAY, len(new), changes, new[len(old) :]]


def _patched(base, op):
    """``base`` changed by ``op`` (objects and arrays are changed in place)."""
    tag = op[0]
    if tag == _SET:
        return op[1]
    if tag == _APPEND:
        if not isinstance(base, str):
            raise CorruptRecord("string append to a non-string")
        return base + op[1]
    if tag == _PATCH_OBJECT:
        if not isinstance(base, dict):
            raise CorruptRecord("object patch of a non-object")
        for key in op[2] if len(op) > 2 else ():
            del base[key]
        for key, change in op[1].items():
            base[key] = _patched(base.get(key, NO_BASE), change)
        return base
    if tag == _PATCH_ARRAY:
        if not isinstance(base, list):
            raise CorruptRecord("array patch of a non-array")
        length, changes, appended = op[1], op[2], op[3]
        del base[length:]
        for index, change in changes:
            base[index] = _patched(base[index], change)
        base.extend(appended)
        return base
    raise CorruptRecord(f"unknown diff op {tag!r}")


def _inserted(mapping: dict, position: int, key: str, value) -> dict:
    """``mapping`` with ``key`` put back at ``position`` in its key order."""
    if position >= len(mapping):
        mapping[key] = value
        return mapping
    items = list(mapping.items())
    items.insert(position, (key, value))
    return dict(items)


def record(seq: int, time: float, kind: int, event_type: bytes, rest: bytes) -> bytes:
    head = _BODY_HEADER.pack(seq, time, kind, len(event_type)) + event_type
    # One copy of ``rest`` (an event can be MBs): the CRC of the body is taken in two parts.
    checksum = zlib.crc32(rest, zlib.crc32(head))
    return b"".join((_RECORD_HEADER.pack(len(head) + len(rest), checksum), head, rest))


def records(data: memoryview, first_seq: int):
    """Yield ``(seq, time, kind, event type, rest, end offset)`` for each record of a
    segment's bytes, in order; raises ``CorruptRecord`` at the first bad one."""
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise CorruptRecord("no journal segment header", 0)
    offset = len(MAGIC)
    expected = first_seq
    while offset < len(data):
        if len(data) - offset < _RECORD_HEADER.size:
            raise CorruptRecord("truncated record header", offset)
        length, checksum = _RECORD_HEADER.unpack_from(data, offset)
        start = offset + _RECORD_HEADER.size
        end = start + length
        if end > len(data):
            raise CorruptRecord("truncated record", offset)
        body = data[start:end]
        if length < _BODY_HEADER.size or zlib.crc32(body) != checksum:
            raise CorruptRecord("record checksum mismatch", offset)
        seq, time, kind, type_length = _BODY_HEADER.unpack_from(body)
        if seq != expected:
            raise CorruptRecord(f"seq {seq} where {expected} was expected", offset)
        type_end = _BODY_HEADER.size + type_length
        if kind not in (VERBATIM, UPDATE) or type_end > length:
            raise CorruptRecord("malformed record", offset)
        event_type = str(body[_BODY_HEADER.size : type_end], "utf-8", "replace")
        yield seq, time, kind, event_type, body[type_end:], end
        expected += 1
        offset = end


def decode_segment(data: memoryview, first_seq: int, after_seq: int, mode: str, out: list):
    """Append ``(seq, type, payload JSON)`` for each record after ``after_seq`` to ``out``."""
    base = NO_BASE
    for seq, _, kind, event_type, rest, _ in records(data, first_seq):
        if kind == VERBATIM:
            if seq > after_seq:
                stored = bytes(rest)
                out.append(
                    (seq, event_type, _delta_form(event_type, stored) if mode == DELTA else stored)
                )
            continue
        (delta_length,) = _DELTA_LENGTH.unpack_from(rest)
        delta_start = _DELTA_LENGTH.size
        delta_end = delta_start + delta_length
        if mode == DELTA:
            if seq > after_seq:
                out.append(
                    (seq, event_type, _delta_form(event_type, bytes(rest[delta_start:delta_end])))
                )
            continue
        try:
            message_slot, partial_slot = json.loads(bytes(rest[delta_end:]))
            message = partial = None
            reference = base
            if message_slot is not None:
                if message_slot[1] is not None:
                    base = _patched(base, message_slot[1])
                if base is NO_BASE:
                    raise CorruptRecord("message diff without a base")
                message = reference = base
            if partial_slot is not None:
                partial = reference if partial_slot[1] is None else partial_slot[1][1]
                if partial is NO_BASE:
                    raise CorruptRecord("partial without a base")
                if message_slot is None:
                    base = partial
            if seq <= after_seq:
                continue
            event = json.loads(bytes(rest[delta_start:delta_end]))
            # pi's two copies of the message are usually one object here: encode it once.
            shared = message_slot is not None and partial is message
            if partial_slot is not None:
                event["assistantMessageEvent"] = _inserted(
                    event["assistantMessageEvent"],
                    partial_slot[0],
                    "partial",
                    _SHARED if shared else partial,
                )
            if message_slot is not None:
                event = _inserted(event, message_slot[0], "message", _SHARED if shared else message)
            encoded = _dumps_sharing(event, message) if shared else encode_payload(event)
            if encoded is None:
                event["message"] = event["assistantMessageEvent"]["partial"] = message
                encoded = encode_payload(event)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            raise CorruptRecord(f"undecodable message update {seq}: {error!r}") from None
        out.append((seq, event_type, encoded))


def encode_update(payload: dict, base) -> tuple[bytes, object]:
    """The ``rest`` of a compact (kind 1) record for a pi 0.x ``message_update``, and the
    diff base for the next update of the segment (``base`` is the current one)."""
    event, message_at, message, partial_at, partial = _split_update(payload)
    reference = base
    message_slot = partial_slot = None
    if message_at is not None:
        message_slot = [message_at, _diff(reference, message)]
        reference = base = message
    if partial_at is not None:
        same = _diff(reference, partial) is None
        partial_slot = [partial_at, None if same else [_SET, partial]]
        if message_at is None:
            base = partial
    delta = encode_payload(event)
    rebuild = encode_payload([message_slot, partial_slot])
    return b"".join((_DELTA_LENGTH.pack(len(delta)), delta, rebuild)), base
