"""
Idempotency keys (piserver/wire/idempotency.py): a request runs at most once per key
and device, a repeat gets the first answer, across a restart too.
"""

import json
import os

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from piserver.common.errors import InvalidParams, NotFound
from piserver.wire.connection import Connection
from piserver.wire.dispatch import Dispatcher
from piserver.wire.envelope import Request
from piserver.wire.idempotency import KEY_LOG, IdempotencyKeys

KEY = "0F2B6C1E-8D5A-4E7B-9C3D-2A1B0C9D8E7F"


def request(method="prompt", request_id=KEY, session_id="s1", **params):
    return Request(id=request_id, method=method, params=params, session_id=session_id)


class Handler:
    """Counts its calls; answers at once, or when ``release`` is called."""

    def __init__(self, hold=False):
        self.calls = []
        self.hold = hold
        self.pending = []

    def __call__(self, connection, req):
        self.calls.append(req)
        if self.hold:
            d = Deferred()
            self.pending.append(d)
            return d
        return {"disposition": "started", "n": len(self.calls)}

    def release(self):
        self.pending.pop(0).callback({"disposition": "started", "n": len(self.calls)})


class Device:
    def __init__(self, name="phone"):
        self.device = name


def outcome_of(d):
    results = []

    def keep(result):
        results.append(result)
        return result

    d.addCallback(keep)
    return results[0] if results else None


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(1_000_000)
    return clock


def dispatcher(handler, keys, method="prompt"):
    return Dispatcher({method: handler, "get_state": handler}, keys=keys)


def test_a_repeat_gets_the_first_answer_and_never_runs(clock, tmp_path):
    handler = Handler()
    d = dispatcher(handler, IdempotencyKeys(clock, tmp_path / KEY_LOG))
    first = outcome_of(d.dispatch(Device(), request(message="hi")))
    again = outcome_of(d.dispatch(Device(), request(message="hi")))
    assert first == (True, {"disposition": "started", "n": 1}, False)
    assert again == (True, {"disposition": "started", "n": 1}, True)
    assert len(handler.calls) == 1


def test_a_repeat_in_progress_waits_for_the_first(clock):
    handler = Handler(hold=True)
    d = dispatcher(handler, IdempotencyKeys(clock, None))
    first = d.dispatch(Device(), request(message="hi"))
    again = d.dispatch(Device(), request(message="hi"))
    assert outcome_of(again) is None
    handler.release()
    assert outcome_of(first)[2] is False
    assert outcome_of(again) == (True, {"disposition": "started", "n": 1}, True)
    assert len(handler.calls) == 1


def test_the_same_key_with_other_params_is_a_conflict(clock):
    handler = Handler()
    d = dispatcher(handler, IdempotencyKeys(clock, None))
    d.dispatch(Device(), request(message="hi"))
    ok, error, repeat = outcome_of(d.dispatch(Device(), request(message="other")))
    assert (ok, error.code, repeat) == (False, "idempotency_conflict", False)
    ok, error, _ = outcome_of(d.dispatch(Device(), request(session_id="s2", message="hi")))
    assert error.code == "idempotency_conflict"
    assert len(handler.calls) == 1


def test_keys_are_per_device_and_only_for_methods_that_change_something(clock):
    handler = Handler()
    d = dispatcher(handler, IdempotencyKeys(clock, None))
    d.dispatch(Device("phone"), request(message="hi"))
    assert outcome_of(d.dispatch(Device("laptop"), request(message="hi")))[2] is False
    d.dispatch(Device(), request("get_state"))
    assert outcome_of(d.dispatch(Device(), request("get_state")))[2] is False
    assert len(handler.calls) == 4


def test_short_ids_are_counters_not_keys(clock):
    handler = Handler()
    d = dispatcher(handler, IdempotencyKeys(clock, None))
    d.dispatch(Device(), request(request_id="r1", message="hi"))
    assert outcome_of(d.dispatch(Device(), request(request_id="r1", message="hi")))[2] is False
    assert len(handler.calls) == 2


def test_the_key_param_is_checked_and_never_reaches_the_handler(clock):
    handler = Handler()
    d = dispatcher(handler, IdempotencyKeys(clock, None))
    ok, error, _ = outcome_of(d.dispatch(Device(), request(request_id="r1", idempotencyKey="x")))
    assert (ok, error.code) == (False, "invalid_params")
    params = {"message": "hi", "idempotencyKey": "key-0001"}
    d.dispatch(Device(), request(request_id="r2", **params))
    assert outcome_of(d.dispatch(Device(), request(request_id="r3", **params)))[2] is True
    assert handler.calls[0].params == {"message": "hi"}
    assert len(handler.calls) == 1


def test_keys_expire_after_the_window(clock):
    handler = Handler()
    d = dispatcher(handler, IdempotencyKeys(clock, None, window=60))
    d.dispatch(Device(), request(message="hi"))
    clock.advance(59)
    assert outcome_of(d.dispatch(Device(), request(message="hi")))[2] is True
    clock.advance(2)
    assert outcome_of(d.dispatch(Device(), request(message="hi")))[2] is False
    assert len(handler.calls) == 2


def test_errors_that_did_nothing_are_forgotten_others_are_kept(clock):
    answers = iter([InvalidParams("bad"), NotFound("no such session"), {"n": 1}])

    def handler(connection, req):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    d = dispatcher(handler, IdempotencyKeys(clock, None))
    assert outcome_of(d.dispatch(Device(), request(message="hi")))[1].code == "invalid_params"
    assert outcome_of(d.dispatch(Device(), request(message="hi")))[1].code == "not_found"
    ok, error, repeat = outcome_of(d.dispatch(Device(), request(message="hi")))
    assert (ok, error.code, repeat) == (False, "not_found", True)


def test_keys_survive_a_restart(clock, tmp_path):
    path = tmp_path / KEY_LOG
    handler = Handler()
    dispatcher(handler, IdempotencyKeys(clock, path)).dispatch(Device(), request(message="hi"))
    # A second key began, and the server died before its answer.
    held = Handler(hold=True)
    dispatcher(held, IdempotencyKeys(clock, path)).dispatch(
        Device(), request(request_id="key-interrupted", message="ho")
    )
    # A torn last line, as a kill -9 in the middle of a write leaves.
    with path.open("ab") as log:
        log.write(b'{"d":"phone","k":"torn')

    restarted = dispatcher(Handler(), IdempotencyKeys(clock, path))
    assert outcome_of(restarted.dispatch(Device(), request(message="hi"))) == (
        True,
        {"disposition": "started", "n": 1},
        True,
    )
    ok, error, repeat = outcome_of(
        restarted.dispatch(Device(), request(request_id="key-interrupted", message="ho"))
    )
    assert (ok, error.code, repeat) == (False, "invalid_state", True)
    ok, error, _ = outcome_of(restarted.dispatch(Device(), request(message="other")))
    assert error.code == "idempotency_conflict"


def test_the_key_log_stays_bounded(clock, tmp_path):
    path = tmp_path / KEY_LOG
    keys = IdempotencyKeys(clock, path, window=10, max_keys=50)
    d = dispatcher(Handler(), keys)
    for n in range(5000):
        d.dispatch(Device(), request(request_id=f"key-{n:08}", message="hi"))
        clock.advance(0.01)
    assert keys.known("phone") == 50
    lines = path.read_bytes().splitlines()
    assert len(lines) < 2 * 2 * 50 + 1000 + 2
    assert all(json.loads(line)["d"] == "phone" for line in lines)


def test_a_repeat_is_marked_on_the_wire(clock):
    sent = []

    class Sink:
        def send_frame(self, data):
            sent.append(json.loads(data))

        def close(self, code, reason):
            pass

    d = Dispatcher({"prompt": lambda c, r: succeed({})}, keys=IdempotencyKeys(clock, None))
    connection = Connection("c1", d, Sink(), device="phone")
    frame = json.dumps(
        {"v": 1, "kind": "request", "id": KEY, "method": "prompt", "params": {"message": "hi"}}
    ).encode()
    connection.frame_received(frame)
    connection.frame_received(frame)
    assert "repeat" not in sent[0]
    assert sent[1]["ok"] is True and sent[1]["repeat"] is True
    assert list(sent[1]) == ["v", "kind", "id", "ok", "repeat", "result"]


def test_a_key_log_that_cannot_be_written_leaves_the_keys_in_memory(clock, tmp_path):
    path = tmp_path / KEY_LOG
    keys = IdempotencyKeys(clock, path)
    # What a full disk does to a write: the descriptor now refuses every write.
    keys.close()
    keys._fd = os.open(os.devnull, os.O_RDONLY)
    handler = Handler()
    d = dispatcher(handler, keys)
    assert outcome_of(d.dispatch(Device(), request(message="hi")))[:2] == (
        True,
        {"disposition": "started", "n": 1},
    )
    assert outcome_of(d.dispatch(Device(), request(message="hi")))[2] is True
    assert len(handler.calls) == 1
