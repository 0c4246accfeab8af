"""
Thousands of hostile frames over a real socket while another client's session
streams an answer: every frame gets exactly one reply, the answer arrives whole.
"""

import json
import random

import pytest_twisted
from twisted.internet.defer import Deferred

from tests.support.fakellm import Tokens

VALID = {"v": 1, "kind": "request", "id": "x", "method": "get_state", "params": {"sessionId": "s"}}
WRONG_TYPES = [
    None,
    True,
    0,
    -1,
    1.5,
    10**30,
    "",
    "../../etc/passwd",
    [],
    {},
    [1, [2]],
    {"a": {"b": None}},
    "\u2028",
    "x" * 5000,
]
METHODS = [
    "hello",
    "session.create",
    "session.attach",
    "session.delete",
    "prompt",
    "abort",
    "get_state",
    "get_messages",
    "set_model",
    "repos.list",
    "native_tool_response",
    "extension_ui_response",
    "no.such.method",
]


def hostile_frames(rng: random.Random, count: int):
    fixed = [
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting
        b'{"v": 1, "kind": "request", "id": "n", "method": "hello", "params": '
        + b'{"a": ' * 5000
        + b"1"
        + b"}" * 5000
        + b"}",
        b"1" * 10_000,  # an integer too long to convert
        b"1e999999",
        b"-0",
        b"NaN",
        b"Infinity",
        b"null",
        b'"string"',
        b"",
        b"\xff\xfe\xfd",
        b"\xed\xa0\x80",  # not UTF-8 (a surrogate encoded)
        b"\xef\xbb\xbf{}",  # a BOM
        b'{"v": 1, "kind": "request", "id": "\\ud800", "method": "hello"}',
    ]
    frames = list(fixed)
    while len(frames) < count:
        kind = rng.randrange(4)
        if kind == 0:
            frames.append(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))))
        elif kind == 1:
            envelope = dict(VALID)
            field = rng.choice(["v", "kind", "id", "method", "params", "sessionId"])
            envelope[field] = rng.choice(WRONG_TYPES)
            frames.append(json.dumps(envelope).encode())
        elif kind == 2:
            params = {
                rng.choice(
                    [
                        "sessionId",
                        "repoId",
                        "message",
                        "mode",
                        "callId",
                        "id",
                        "lastSeq",
                        "client",
                        "resume",
                        "nativeTools",
                    ]
                ): rng.choice(WRONG_TYPES)
                for _ in range(rng.randrange(1, 4))
            }
            frames.append(
                json.dumps(
                    {
                        "v": 1,
                        "kind": "request",
                        "id": f"f{len(frames)}",
                        "sessionId": rng.choice(["../x", "..", "/etc", "a" * 300, None]),
                        "method": rng.choice(METHODS),
                        "params": params,
                    },
                    allow_nan=True,
                ).encode()
            )
        else:
            text = json.dumps(VALID)
            cut = rng.randrange(len(text))
            frames.append(
                (text[:cut] + rng.choice(["", "}", "]", ",", "\\", '"']) + text[cut + 1 :]).encode()
            )
    return frames


@pytest_twisted.ensureDeferred
async def test_hostile_frames_while_an_answer_streams(pi_server, fake_llm):
    answer = Tokens(400, delay=0.005)
    fake_llm.script(answer)
    reader = await pi_server.client()
    session_id = (await reader.call("session.create", {"mode": "chat"}))["sessionId"]
    await reader.call("prompt", {"message": "stream while they attack"}, session_id=session_id)

    attacker = await pi_server.client()
    rng = random.Random(20261124)
    frames = hostile_frames(rng, 3000)
    before = len(attacker.frames)
    all_answered = Deferred()
    expected = before + len(frames)

    def check(_=None):
        if len(attacker.frames) >= expected and not all_answered.called:
            all_answered.callback(None)
        elif not all_answered.called:
            attacker.next_frame().addCallback(check)

    attacker.next_frame().addCallback(check)
    for index, frame in enumerate(frames):
        attacker.send_raw(frame, binary=bool(index % 2))
    await all_answered
    replies = attacker.frames[before:]
    assert len(replies) == len(frames)
    assert all(r["kind"] == "response" for r in replies)
    codes = {r["error"]["code"] for r in replies if not r["ok"]}
    assert "internal_error" not in codes
    assert {"parse_error", "invalid_request"} <= codes

    end = await reader.wait_for_event(
        lambda f: f["type"] == "agent_settled" and f["sessionId"] == session_id
    )
    events = reader.event_frames(session_id)
    assert [f["seq"] for f in events] == list(range(1, end["seq"] + 1))
    text = "".join(
        f["payload"]["assistantMessageEvent"]["delta"]
        for f in events
        if f["type"] == "message_update"
        and f["payload"]["assistantMessageEvent"]["type"] == "text_delta"
    )
    assert text == answer.text
    # Both connections are still usable.
    assert (await attacker.call("session.list"))["sessions"]
    assert (await reader.call("get_state", session_id=session_id))["isStreaming"] is False
