"""Session observers: a run's outcome worked out once from pi's events, every observer
told (one that fails does not stop the others), device calls telling of input needed."""

import json

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from piserver.agents import nativetools
from piserver.sessions.devicecalls import DeviceCalls
from piserver.sessions.observer import (
    InputKind,
    RunOutcome,
    RunWatcher,
    SessionObserver,
    SessionObservers,
)


class Session:
    id = "s1"


SESSION = Session()


class Recorder(SessionObserver):
    def __init__(self):
        self.heard = []

    def run_started(self, session):
        self.heard.append(("run_started",))

    def run_ended(self, session, outcome, summary):
        self.heard.append(("run_ended", outcome, summary))

    def agent_crashed(self, session, code, signal):
        self.heard.append(("agent_crashed", code, signal))

    def input_needed(self, session, kind, detail):
        self.heard.append(("input_needed", kind, detail))

    def native_tool_timed_out(self, session, tool):
        self.heard.append(("native_tool_timed_out", tool))


def said(text):
    return {"message": {"role": "assistant", "content": [{"type": "text", "text": text}]}}


@pytest.mark.parametrize(
    ("settled", "outcome", "summary"),
    [
        ({"aborted": False, "error": None}, RunOutcome.OK, "second"),
        ({"aborted": True}, RunOutcome.ABORTED, "the run was aborted"),
        ({"error": {"code": "agent_exited"}}, RunOutcome.ERROR, "the run failed: agent_exited"),
        ({"error": {"message": "boom"}}, RunOutcome.ERROR, "the run failed: boom"),
    ],
)
def test_a_runs_outcome_and_summary_are_worked_out_once(settled, outcome, summary):
    recorder = Recorder()
    runs = RunWatcher(recorder)
    for event_type, payload in [
        ("agent_start", {}),
        ("message_update", {}),
        ("message_end", said("first")),
        ("message_end", {"message": {"role": "user", "content": []}}),
        ("message_end", said("second")),
        ("agent_settled", settled),
    ]:
        runs.event(SESSION, event_type, payload)
    assert recorder.heard == [("run_started",), ("run_ended", outcome, summary)]


def test_a_run_without_text_finished_and_a_crash_is_told():
    recorder = Recorder()
    runs = RunWatcher(recorder)
    runs.event(SESSION, "agent_settled", {})
    runs.event(SESSION, "agent_exit", {"code": None, "signal": "SIGKILL", "stderrTail": ""})
    assert recorder.heard == [
        ("run_ended", RunOutcome.OK, "the run finished"),
        ("agent_crashed", None, "SIGKILL"),
    ]


def test_an_observer_that_fails_is_logged_and_the_others_still_hear():
    events = []
    observers = SessionObservers()
    observers.log = Logger(observer=events.append)

    class Broken(SessionObserver):
        def agent_restarted(self, session):
            raise RuntimeError("a bug in an observer")

    recorder = Recorder()
    recorder.agent_restarted = lambda session: recorder.heard.append(("agent_restarted",))
    observers.add(Broken())
    observers.add(recorder)
    observers.agent_restarted(SESSION)
    assert recorder.heard == [("agent_restarted",)]
    [event] = events
    assert event["log_failure"].check(RuntimeError)
    assert event["happening"] == "agent_restarted" and event["session_id"] == "s1"
    observers.remove(recorder)
    observers.agent_restarted(SESSION)
    assert recorder.heard == [("agent_restarted",)]


def test_device_calls_tell_of_input_needed_and_of_a_call_nobody_answered():
    clock, recorder, sent = Clock(), Recorder(), []
    calls = DeviceCalls(
        "s1",
        clock,
        lambda event_type, payload, to=None: None,
        sent.append,
        lambda: [],
        call_timeout=5.0,
        observer=recorder,
        session=SESSION,
    )
    payload = {"toolCallId": "call_1", "toolName": "get_location", "args": {}}
    tool_call = {
        "type": "extension_ui_request",
        "id": "req-1",
        "method": "input",
        "title": nativetools.CALL_TITLE,
        "placeholder": json.dumps(payload),
    }
    assert calls.agent_event(tool_call) is True
    calls.agent_event({"type": "extension_ui_request", "id": "d1", "method": "confirm"})
    calls.agent_event(
        {"type": "extension_ui_request", "id": "d2", "method": "select", "title": "Which?"}
    )
    clock.advance(5.0)
    assert recorder.heard == [
        ("input_needed", InputKind.NATIVE_TOOL, "the agent waits for the device tool get_location"),
        ("input_needed", InputKind.DIALOG, "the agent waits for an answer (confirm)"),
        ("input_needed", InputKind.DIALOG, "the agent asks: Which?"),
        ("native_tool_timed_out", "get_location"),
    ]
    assert len(sent) == 1  # pi was answered that nobody could run the tool
