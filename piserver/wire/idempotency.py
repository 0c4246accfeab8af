"""
Requests at most once, by key (issue 24).

A client that loses its connection before an answer cannot know whether its request
ran; it sends it again with the same key. For the methods that change something
(``IDEMPOTENT_METHODS``) the dispatcher asks ``IdempotencyKeys.run``: the first request
with a key runs, a repeat gets the first answer (marked as a repeat) and never runs,
a repeat that comes while the first still runs waits for its answer, and the same key
with other params is refused (``idempotency_conflict``).

The key is ``params.idempotencyKey``, else the envelope ``id`` when it is 8 to 128
characters long (the seed's app sends a fresh UUID per request, and the same one when
it retries); shorter ids are counters (``r1``, ``w2``), not keys. Keys belong to a device
(the name of the token it connected with) and are kept for a window (24 h by default).

Keys survive a ``kill -9``: a request's key is written to an append-only log before the
request runs, and its answer when it is known. The write is a plain ``write(2)`` to the
file: once it returns the bytes are the kernel's, which a killed process cannot lose
(an fsync per request would cost milliseconds; a power cut can lose the last keys, as it
can the effect itself). A key whose answer never reached the log (the server died while
it ran) is answered ``invalid_state``: the client has to look at what happened. The log
is rewritten with only the live keys when it has grown well past them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import attr
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from piserver.common.defaults import DEFAULT_IDEMPOTENCY_WINDOW
from piserver.common.errors import (
    IdempotencyConflict,
    InvalidParams,
    InvalidState,
    RememberedError,
    RpcError,
)
from piserver.common.files import write_bytes_atomic
from piserver.common.outcome import SharedOutcome
from piserver.wire.envelope import Request

# Methods that change something: a repeat of one must not run again. Reads are not here
# (running them twice is harmless), nor pi commands the server does not know.
IDEMPOTENT_METHODS = frozenset(
    {
        "prompt",
        "steer",
        "follow_up",
        "abort",
        "bash",
        "abort_bash",
        "abort_retry",
        "clear_queue",
        "compact",
        "session.create",
        "session.import",
        "session.delete",
        "fork",
        "clone",
        "new_session",
        "clear_conversation",
        "session.commit",
        "session.push",
        "session.pull_request",
        "set_model",
        "cycle_model",
        "set_thinking_level",
        "cycle_thinking_level",
        "set_steering_mode",
        "set_follow_up_mode",
        "set_auto_compaction",
        "set_auto_retry",
        "set_session_name",
        "session.set_budget",
        "native_tool_response",
        "extension_ui_response",
        # Issue 23's tool-call approvals (built on another branch).
        "approval.respond",
    }
)

KEY_PARAM = "idempotencyKey"
KEY_MIN, KEY_MAX = 8, 128
KEY_LOG = "idempotency-keys.log"
# Bounds: keys remembered per device (the oldest go first), and the size of an answer
# that is kept (pi caps tool output well below it; a bigger one is not replayed).
MAX_KEYS_PER_DEVICE = 10_000
MAX_ANSWER_BYTES = 256 * 1024
# Errors that say nothing was done: the key is forgotten, so the client may fix the
# request (or wait) and send it again with the same key.
NOTHING_DONE = frozenset(
    {
        "invalid_params",
        "invalid_request",
        "unknown_method",
        "rate_limited",
        "storage_full",
        "budget_exceeded",
    }
)


class Status(enum.Enum):
    running = "running"
    answered = "answered"
    # Began before a restart and never answered: whether it took effect is unknown.
    interrupted = "interrupted"


# (ok, result dict | RpcError), as Dispatcher.dispatch fires.
Outcome = tuple[bool, object]


@attr.s(slots=True)
class Entry:
    fingerprint: str = attr.ib()
    at: float = attr.ib()
    status: Status = attr.ib()
    outcome: Outcome | None = attr.ib(default=None)
    answered: SharedOutcome = attr.ib(factory=SharedOutcome)


def request_key(request: Request) -> str | None:
    """The request's idempotency key, or None when it has none."""
    key = request.params.get(KEY_PARAM)
    if key is not None:
        if not isinstance(key, str) or not KEY_MIN <= len(key) <= KEY_MAX:
            raise InvalidParams(
                f'"{KEY_PARAM}" must be a string of {KEY_MIN} to {KEY_MAX} characters'
            )
        return key
    if KEY_MIN <= len(request.id) <= KEY_MAX:
        return request.id
    return None


def without_key(request: Request) -> Request:
    """The request as handlers see it: the key is the dispatcher's, never pi's."""
    if KEY_PARAM not in request.params:
        return request
    params = {k: v for k, v in request.params.items() if k != KEY_PARAM}
    return attr.evolve(request, params=params)


def fingerprint(request: Request) -> str:
    """What must be the same for a repeat: the method, its session and its params."""
    text = json.dumps(
        [request.method, request.session_id, request.params], sort_keys=True, separators=(",", ":")
    )
    return hashlib.blake2b(text.encode("ascii"), digest_size=16).hexdigest()


class IdempotencyKeys:
    """The keys of each device, in memory and in the key log at ``path`` (None: memory
    only). ``clock`` has ``seconds()``."""

    log = Logger()

    def __init__(
        self,
        clock,
        path: Path | None,
        window: float = DEFAULT_IDEMPOTENCY_WINDOW,
        max_keys: int = MAX_KEYS_PER_DEVICE,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ):
        self._clock = clock
        self._path = path
        self.window = window
        self._max_keys = max_keys
        self._max_answer_bytes = max_answer_bytes
        # device -> key -> Entry, oldest first.
        self._devices: dict[str, OrderedDict[str, Entry]] = {}
        self._fd: int | None = None
        self._records = 0
        if path is not None:
            self._load()
            self._rewrite()

    # -- the dispatcher's entry point -------------------------------------------

    def run(
        self, device: str | None, request: Request, call: Callable[[Request], Deferred]
    ) -> Deferred:
        """Fire with ``(ok, value, repeat)``: ``call(request)``'s outcome the first time
        a key is seen, the remembered one (``repeat`` True) after that."""
        try:
            key = request_key(request)
        except RpcError as e:
            return _fired((False, e, False))
        stripped = without_key(request)
        if key is None:
            return call(stripped).addCallback(_fresh)
        device = device or ""
        keys = self._devices.setdefault(device, OrderedDict())
        now = self._clock.seconds()
        self._expire(keys, now)
        digest = fingerprint(stripped)
        entry = keys.get(key)
        if entry is not None:
            if entry.fingerprint != digest:
                return _fired(
                    (
                        False,
                        IdempotencyConflict(
                            f"key {key[:40]!r} was used by a request with other params; "
                            "use a new key for a new request"
                        ),
                        False,
                    )
                )
            return entry.answered.observe().addCallback(_repeated)
        entry = keys[key] = Entry(digest, now, Status.running)
        self._append({"d": device, "k": key, "f": digest, "t": now})
        d = call(stripped)
        d.addCallback(self._answered, device, key, entry)
        return d

    def _answered(self, outcome: Outcome, device: str, key: str, entry: Entry):
        ok, value = outcome
        if not ok and value.code in NOTHING_DONE:
            # Nothing happened: the same key may be sent again once the request is right.
            if self._devices.get(device, {}).get(key) is entry:
                del self._devices[device][key]
            self._append({"d": device, "k": key, "forget": True})
            entry.answered.settle(outcome)
        else:
            kept = self._keep(outcome)
            entry.status, entry.outcome = Status.answered, kept
            self._append({"d": device, "k": key, "a": _answer_record(kept)})
            entry.answered.settle(kept)
        return (ok, value, False)

    def _keep(self, outcome: Outcome) -> Outcome:
        ok, value = outcome
        if len(json.dumps(_answer_record(outcome))) <= self._max_answer_bytes:
            return outcome
        return (
            False,
            InvalidState("this request ran; its answer was too large to keep for a repeat"),
        )

    # -- bounds --------------------------------------------------------------

    def _expire(self, keys: OrderedDict, now: float) -> None:
        """Drop the expired keys, and the oldest past the bound (leaving room for one)."""
        while keys:
            key, entry = next(iter(keys.items()))
            if entry.at > now - self.window and len(keys) < self._max_keys:
                break
            del keys[key]

    def known(self, device: str | None) -> int:
        return len(self._devices.get(device or "", ()))

    # -- the key log -----------------------------------------------------------

    def _load(self) -> None:
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return
        now = self._clock.seconds()
        for line in data.splitlines():
            try:
                record = json.loads(line)
                device, key = record["d"], record["k"]
                keys = self._devices.setdefault(device, OrderedDict())
                if "f" in record:
                    if record["t"] > now - self.window:
                        entry = Entry(record["f"], record["t"], Status.interrupted)
                        entry.outcome = _INTERRUPTED
                        entry.answered.settle(_INTERRUPTED)
                        keys[key] = entry
                elif key in keys:
                    if record.get("forget"):
                        del keys[key]
                    else:
                        entry = keys[key]
                        entry.status = Status.answered
                        entry.outcome = _from_record(record["a"])
                        entry.answered = SharedOutcome()
                        entry.answered.settle(entry.outcome)
            except (ValueError, KeyError, TypeError, AttributeError):
                # A torn last line (killed mid-write) or a damaged one: the others stand.
                self.log.warn("{path}: skipped an unreadable line", path=str(self._path))
        for keys in self._devices.values():
            self._expire(keys, now)

    def _rewrite(self) -> None:
        """Replace the log with the live keys only, and append to the new one."""
        lines = []
        for device, keys in self._devices.items():
            for key, entry in keys.items():
                lines.append({"d": device, "k": key, "f": entry.fingerprint, "t": entry.at})
                if entry.status is Status.answered:
                    lines.append({"d": device, "k": key, "a": _answer_record(entry.outcome)})
        self._records = len(lines)
        self._live = max(1, self._records)
        try:
            write_bytes_atomic(self._path, b"".join(_line(r) for r in lines))
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as e:
            # A full disk, say: the keys stay in memory, the old log (if open) is appended
            # to, and the rewrite is tried again once as many records more have come.
            self.log.error("cannot rewrite {path}: {error}", path=str(self._path), error=e.strerror)
            return
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd

    def _append(self, record: dict) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, _line(record))
        except OSError as e:
            # The request still runs (refusing it would not undo a full disk); its key is
            # known until a restart.
            self.log.error(
                "cannot write to {path}: {error}; the key is kept in memory only",
                path=str(self._path),
                error=e.strerror,
            )
            return
        self._records += 1
        if self._records > 2 * self._live + 1000:
            now = self._clock.seconds()
            for keys in self._devices.values():
                self._expire(keys, now)
            self._rewrite()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_INTERRUPTED: Outcome = (
    False,
    InvalidState(
        "the server stopped while this request ran: whether it took effect is unknown; "
        "look (get_state, get_messages, session.list) before sending it with a new key"
    ),
)


def _answer_record(outcome: Outcome) -> dict:
    ok, value = outcome
    return {"ok": True, "result": value} if ok else {"ok": False, "error": value.to_dict()}


def _from_record(answer: dict) -> Outcome:
    if answer["ok"]:
        if not isinstance(answer["result"], dict):
            raise TypeError("result is not an object")
        return (True, answer["result"])
    error = answer["error"]
    return (False, RememberedError(str(error["message"]), code=str(error["code"])))


def _line(record: dict) -> bytes:
    # ASCII: a lone surrogate in a param or answer has no UTF-8 form.
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


def _fresh(outcome: Outcome):
    ok, value = outcome
    return (ok, value, False)


def _repeated(outcome: Outcome):
    ok, value = outcome
    return (ok, value, True)


def _fired(value) -> Deferred:
    d = Deferred()
    d.callback(value)
    return d
