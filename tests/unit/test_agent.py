import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from piserver.agents.protocol import (
    STDERR_LOG_LINES_PER_SECOND,
    STDERR_TAIL_BYTES,
    AgentExit,
    AgentProtocol,
    LineSplitter,
)
from piserver.common.errors import AgentCommandFailed, AgentExited, AgentTimeout
from tests.support.deferreds import outcome_of
from tests.support.fakeprocess import FakeProcessReactor


class Events:
    def __init__(self):
        self.received: list[tuple[dict, bytes]] = []

    def __call__(self, event, raw):
        self.received.append((event, raw))

    @property
    def types(self):
        return [event.get("type") for event, _ in self.received]


def formats(logged):
    return [event.get("log_format", "") for event in logged]


def make_agent(**kwargs):
    reactor = FakeProcessReactor()
    events = Events()
    agent = AgentProtocol("s1", reactor, events, **kwargs)
    reactor.spawnProcess(agent, "/fake/pi", ["/fake/pi", "--mode", "rpc"])
    return agent, reactor.spawned[0].process, reactor, events


def still_waiting(d):
    return not d.called


def event_line(payload) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode() + b"\n"


# -- framing -----------------------------------------------------------------


def test_splitter_strips_one_cr_and_keeps_partial_lines():
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":1}\r\n{"b"') == [(b'{"a":1}', 0)]
    assert splitter.feed(b":2}\r") == []
    assert splitter.feed(b"\n\r\r\n") == [(b'{"b":2}', 0), (b"\r", 0)]


def test_splitter_does_not_split_on_unicode_separators():
    line = '{"t":"a\u2028b\u2029c\x85d"}'.encode()
    assert LineSplitter().feed(line + b"\n") == [(line, 0)]


def test_splitter_flush_returns_an_unterminated_last_line():
    splitter = LineSplitter()
    splitter.feed(b"abc")
    assert splitter.flush() == [(b"abc", 0)]
    assert splitter.flush() == []


def test_splitter_caps_lines_and_counts_what_it_cut():
    splitter = LineSplitter(max_line_bytes=4)
    assert splitter.feed(b"abcdefg\nxy") == [(b"abcd", 3)]
    assert splitter.feed(b"zzzz\nok\n") == [(b"xyzz", 2), (b"ok", 0)]


@settings(derandomize=True)
@given(
    lines=st.lists(
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n")), max_size=8
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_splitter_recovers_lines_whatever_the_chunking(lines, cuts):
    stream = "".join(line + "\n" for line in lines).encode()
    positions = sorted({min(cut, len(stream)) for cut in cuts})
    bounds = [0, *positions, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    splitter = LineSplitter()
    received = [line for chunk in chunks for line, _ in splitter.feed(chunk)]
    expected = [line[:-1] if line.endswith("\r") else line for line in lines]
    assert [line.decode() for line in received] == expected


def test_events_reach_the_callback_with_their_exact_bytes():
    agent, process, _, events = make_agent()
    raw = '{"type":"message_update", "text" : "caf\u00e9 \u2028 \U0001f600"}'.encode()
    process.stdout(raw + b"\r\n")
    assert events.received == [
        ({"type": "message_update", "text": "caf\u00e9 \u2028 \U0001f600"}, raw)
    ]


def test_utf8_character_split_across_chunks():
    agent, process, _, events = make_agent()
    line = event_line({"type": "message_update", "delta": "\u00e9\U0001f600\u20ac"})
    emoji_start = line.index("\U0001f600".encode())
    for chunk in (
        line[: emoji_start + 1],
        line[emoji_start + 1 : emoji_start + 3],
        line[emoji_start + 3 :],
    ):
        process.stdout(chunk)
    assert events.received == [
        ({"type": "message_update", "delta": "\u00e9\U0001f600\u20ac"}, line[:-1])
    ]


def test_several_lines_in_one_chunk():
    agent, process, _, events = make_agent()
    process.stdout(b'{"type":"a"}\n{"type":"b"}\n{"type":"c"}')
    assert events.types == ["a", "b"]
    process.stdout(b"\n")
    assert events.types == ["a", "b", "c"]


def test_a_30_mb_line_in_64_kib_chunks():
    agent, process, _, events = make_agent()
    text = "x\u00e9" * (15 * 1024 * 1024)
    line = event_line({"type": "message_update", "text": text})
    assert len(line) > 30 * 1024 * 1024
    for start in range(0, len(line), 64 * 1024):
        process.stdout(line[start : start + 64 * 1024])
    [(event, raw)] = events.received
    assert event["text"] == text
    assert raw == line[:-1]


def test_a_long_line_in_small_chunks_takes_linear_time():
    # 15,360 chunks: joining once takes well under a second here, re-copying
    # the partial line on every chunk (~240 GB) takes half a minute.
    agent, process, _, events = make_agent()
    line = b'{"type":"big","text":"' + b"y" * (30 * 1024 * 1024) + b'"}\n'
    chunk = 2 * 1024
    started = time.perf_counter()
    for start in range(0, len(line), chunk):
        process.stdout(line[start : start + chunk])
    elapsed = time.perf_counter() - started
    assert events.types == ["big"]
    assert elapsed < 3


def test_an_over_cap_line_is_skipped_and_logged(logged):
    agent, process, _, events = make_agent(max_line_bytes=100)
    process.stdout(event_line({"type": "huge", "text": "z" * 500}))
    process.stdout(event_line({"type": "small"}))
    assert events.types == ["small"]
    assert any("skipped a stdout line of" in f for f in formats(logged))


def test_garbage_lines_are_logged_and_skipped(logged):
    agent, process, _, events = make_agent()
    process.stdout(b'not json\n[1,2]\n"str"\n\xff\xfe{}\n\n' + b"[" * 100000 + b"\n")
    process.stdout(b'{"type":"after"}\n')
    assert events.types == ["after"]
    garbage = [e for e in logged if "not a JSON object" in e.get("log_format", "")]
    assert len(garbage) == 5
    assert all(len(e["line"]) < 300 for e in garbage)


def test_lines_are_read_as_json_loads_reads_them(logged):
    agent, process, _, events = make_agent()
    process.stdout(b' {"type":"spaced"} \n{"type":"one"} {"type":"two"}\n{"type":"last"}\n')
    assert events.types == ["spaced", "last"]
    assert sum("not a JSON object" in e.get("log_format", "") for e in logged) == 1


def test_a_failing_event_callback_does_not_break_the_protocol(logged):
    reactor = FakeProcessReactor()
    seen = []

    def on_event(event, raw):
        seen.append(event["type"])
        raise RuntimeError("handler bug")

    agent = AgentProtocol("s1", reactor, on_event)
    reactor.spawnProcess(agent, "/fake/pi", ["/fake/pi"])
    process = reactor.spawned[0].process
    answered = agent.command("get_state")
    process.stdout(b'{"type":"one"}\n{"type":"two"}\n')
    process.respond(process.lines()[0], data={"ok": 1})
    assert seen == ["one", "two"]
    assert outcome_of(answered) == {"ok": 1}
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 2
    assert all(e["log_failure"].check(RuntimeError) for e in failures)


# -- commands ----------------------------------------------------------------


def test_command_is_one_json_line_with_a_fresh_id():
    agent, process, _, _ = make_agent()
    agent.command("prompt", message="hi \u2028 \U0001f600", streamingBehavior="steer")
    agent.command("get_state")
    written = bytes(process.written)
    assert written.count(b"\n") == 2
    assert written.isascii()
    first, second = process.lines()
    assert first == {
        "id": first["id"],
        "type": "prompt",
        "message": "hi \u2028 \U0001f600",
        "streamingBehavior": "steer",
    }
    assert second["type"] == "get_state"
    assert first["id"] != second["id"]


def test_responses_are_matched_by_id_in_any_order():
    agent, process, _, events = make_agent()
    first = agent.command("get_state")
    second = agent.command("get_messages")
    state, messages = process.lines()
    process.respond(messages, data={"messages": []})
    assert still_waiting(first)
    assert outcome_of(second) == {"messages": []}
    process.respond(state, data={"isStreaming": False})
    assert outcome_of(first) == {"isStreaming": False}
    assert events.received == []


def test_a_response_without_data_fires_with_none():
    agent, process, _, _ = make_agent()
    aborted = agent.command("abort")
    process.respond(process.lines()[0])
    assert outcome_of(aborted) is None


def test_a_failed_response_carries_pis_message():
    agent, process, _, _ = make_agent()
    prompted = agent.command("prompt", message="x")
    process.respond(process.lines()[0], success=False, error_message="Agent is already processing.")
    failure = outcome_of(prompted)
    assert failure.check(AgentCommandFailed)
    assert failure.value.message == "Agent is already processing."


def test_command_fields_may_not_override_id_or_type():
    agent, process, _, _ = make_agent()
    assert outcome_of(agent.command("prompt", id="x")).check(ValueError)
    assert outcome_of(agent.command("prompt", type="x")).check(ValueError)
    assert outcome_of(agent.command("prompt", message=float("nan"))).check(ValueError)
    assert process.written == b""


def test_a_command_times_out_and_its_late_answer_is_dropped(logged):
    agent, process, reactor, events = make_agent(command_timeout=30)
    slow = agent.command("get_state")
    quick = agent.command("compact", timeout=5)
    reactor.advance(5)
    failure = outcome_of(quick)
    assert failure.check(AgentTimeout)
    assert "compact" in failure.value.message
    assert still_waiting(slow)
    reactor.advance(25)
    assert outcome_of(slow).check(AgentTimeout)
    process.respond(process.lines()[1], data={})
    assert events.received == []
    assert any("late answer" in f for f in formats(logged))


def test_an_answered_command_cancels_its_timer():
    agent, process, reactor, _ = make_agent()
    answered = agent.command("get_state")
    process.respond(process.lines()[0], data={})
    assert outcome_of(answered) == {}
    assert reactor.getDelayedCalls() == []


def test_a_cancelled_command_is_forgotten():
    agent, process, reactor, events = make_agent()
    answered = agent.command("get_state")
    answered.cancel()
    assert outcome_of(answered).check(defer.CancelledError)
    assert reactor.getDelayedCalls() == []
    process.respond(process.lines()[0], data={})
    assert events.received == []


def test_unmatched_responses_are_logged_not_relayed(logged):
    agent, process, _, events = make_agent()
    process.stdout(
        b'{"type":"response","command":"parse","success":false,"error":"Failed to parse command"}\n'
    )
    assert events.received == []
    assert any("no pending command" in f for f in formats(logged))


def test_send_writes_a_line_without_tracking():
    agent, process, reactor, _ = make_agent()
    agent.send({"type": "extension_ui_response", "id": "ui-1", "value": "a"})
    assert process.lines() == [{"type": "extension_ui_response", "id": "ui-1", "value": "a"}]
    assert reactor.getDelayedCalls() == []


# -- ready and exit --------------------------------------------------------


def test_ready_fires_with_the_handshake_data():
    agent, process, _, _ = make_agent()
    before = agent.ready
    agent.handshake(timeout=10)
    assert still_waiting(before)
    [command] = process.lines()
    assert command["type"] == "get_state"
    process.respond(command, data={"sessionId": "abc"})
    assert outcome_of(before) == {"sessionId": "abc"}
    assert outcome_of(agent.ready) == {"sessionId": "abc"}


def test_ready_fails_when_the_handshake_times_out():
    agent, _, reactor, _ = make_agent()
    ready = agent.handshake(timeout=10)
    reactor.advance(10)
    assert outcome_of(ready).check(AgentTimeout)


def test_exit_fails_pending_commands_and_later_ones():
    agent, process, reactor, _ = make_agent()
    ready = agent.handshake(timeout=10)
    pending = agent.command("prompt", message="x")
    exited = agent.exited
    process.stderr(b"boom\n")
    process.end(code=1)
    for d in (ready, pending):
        failure = outcome_of(d)
        assert failure.check(AgentExited)
        assert failure.value.message == "agent exited (code 1)"
    assert outcome_of(exited) == AgentExit(code=1, signal=None, stderr_tail="boom\n")
    assert outcome_of(agent.exited) == agent.exit
    assert reactor.getDelayedCalls() == []
    later = outcome_of(agent.command("get_state"))
    assert later.check(AgentExited)
    assert later.value.message == "agent exited (code 1)"


def test_exit_by_signal_is_described_by_its_signal():
    agent, process, _, _ = make_agent()
    pending = agent.command("get_state")
    process.end(code=None, signal=9)
    assert outcome_of(pending).value.message == "agent exited (signal 9)"
    assert agent.exit.code is None
    assert agent.exit.signal == 9


def test_clean_exit_and_stop_request_are_recorded():
    agent, process, _, _ = make_agent()
    agent.stop_requested = True
    process.end(code=0)
    assert agent.exit == AgentExit(code=0, signal=None, stderr_tail="", stop_requested=True)


def test_an_unterminated_last_line_is_read_at_exit():
    agent, process, _, events = make_agent()
    process.stdout(b'{"type":"last"}')
    process.end()
    assert events.types == ["last"]


def test_closing_stdin_makes_later_commands_fail():
    agent, process, _, _ = make_agent()
    agent.close_stdin()
    assert process.stdin_closed
    failure = outcome_of(agent.command("get_state"))
    assert failure.check(AgentExited)
    agent.send({"type": "extension_ui_response", "id": "1", "cancelled": True})
    assert process.written == b""


def test_signals_after_exit_are_ignored():
    agent, process, _, _ = make_agent()
    agent.signal("TERM")
    process.end(code=None, signal=15)
    agent.signal("KILL")
    assert process.signals == ["TERM"]


# -- stderr ------------------------------------------------------------------


def test_stderr_tail_keeps_the_last_bytes():
    agent, process, _, _ = make_agent()
    process.stderr(b"old " * 5000)
    process.stderr("\u00e9".encode() * 5000 + b"end\n")
    tail = agent.stderr_tail
    assert tail.endswith("end\n")
    assert "old" not in tail
    assert "\ufffd" not in tail
    assert len(tail.encode()) <= STDERR_TAIL_BYTES


def test_stderr_lines_are_logged_truncated_and_rate_limited(logged):
    agent, process, reactor, _ = make_agent()
    process.stderr(b"w" * 5000 + b"\n")
    for number in range(100):
        process.stderr(b"line %d\n" % number)
    stderr_lines = [e for e in logged if "stderr:" in e.get("log_format", "")]
    assert len(stderr_lines) == STDERR_LOG_LINES_PER_SECOND
    assert len(stderr_lines[0]["line"]) < 1100
    assert "more bytes" in stderr_lines[0]["line"]
    reactor.advance(1)
    process.stderr(b"next second\n")
    suppressed = [e for e in logged if "rate limit" in e.get("log_format", "")]
    assert [e["count"] for e in suppressed] == [101 - STDERR_LOG_LINES_PER_SECOND]
    assert logged[-1]["line"] == "next second"
    assert "line 99" in agent.stderr_tail


def test_no_liveness_probe_while_a_run_waits_for_a_person():
    hung = []
    agent, process, reactor, _events = make_agent(probe_interval=5.0, on_hung=hung.append)
    agent.expect_output = True
    agent.waiting_for_person = True
    reactor.advance(5.0)
    reactor.advance(5.0)
    assert process.written == b"" and hung == []
    # Answered: silence is suspicious again.
    agent.waiting_for_person = False
    reactor.advance(5.0)
    assert [line["type"] for line in process.lines()] == ["get_state"]
