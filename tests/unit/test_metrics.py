"""ServerMetrics: what moves which counter, request timing, the live gauges; /ready."""

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from piserver.common.errors import NotFound
from piserver.ops.metrics import ServerMetrics, session_state
from piserver.ops.readiness import readiness
from piserver.sessions.observer import InputKind, RunWatcher


class SESSION:
    id = "s1"


def samples(metrics: ServerMetrics) -> dict:
    found = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics, name, **labels):
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


@pytest.mark.parametrize(
    "settled, outcome",
    [
        ({"type": "agent_settled", "aborted": False, "error": None}, "ok"),
        ({"type": "agent_settled", "aborted": True}, "aborted"),
        ({"type": "agent_settled", "error": {"code": "agent_exited"}}, "error"),
    ],
)
def test_runs_and_their_outcomes(settled, outcome):
    metrics = ServerMetrics(Clock())
    runs = RunWatcher(metrics)
    runs.event(SESSION, "agent_start", {})
    runs.event(SESSION, "message_update", {})
    runs.event(SESSION, "agent_settled", settled)
    assert value(metrics, "pi_server_runs_started_total") == 1
    assert value(metrics, "pi_server_runs_ended_total", outcome=outcome) == 1


def test_crashes_restarts_and_native_tools():
    metrics = ServerMetrics(Clock())
    RunWatcher(metrics).event(SESSION, "agent_exit", {})
    metrics.agent_restarted(SESSION)
    for _ in range(3):
        metrics.input_needed(SESSION, InputKind.NATIVE_TOOL, "the agent waits for a device tool")
    metrics.input_needed(SESSION, InputKind.DIALOG, "the agent asks: sure?")
    metrics.native_tool_timed_out(SESSION, "get_location")
    assert value(metrics, "pi_server_agent_crashes_total") == 1
    assert value(metrics, "pi_server_agent_restarts_total") == 1
    assert value(metrics, "pi_server_native_tool_calls_total") == 3
    assert value(metrics, "pi_server_native_tool_timeouts_total") == 1


def test_events_and_bytes_by_mode():
    metrics = ServerMetrics(Clock())
    metrics.event_sent("full", 1000)
    metrics.event_sent("full", 500)
    metrics.event_sent("delta", 40)
    assert value(metrics, "pi_server_events_sent_total", mode="full") == 2
    assert value(metrics, "pi_server_event_bytes_sent_total", mode="full") == 1500
    assert value(metrics, "pi_server_event_bytes_sent_total", mode="delta") == 40


def test_requests_are_timed_by_method_and_errors_counted_by_code():
    clock = Clock()
    metrics = ServerMetrics(clock)
    slow = Deferred()
    table, fallback = metrics.timed_methods(
        {
            "hello": lambda c, r: succeed({}),
            "slow": lambda c, r: slow,
            "missing": lambda c, r: fail(NotFound("no")),
            "broken": lambda c, r: 1 / 0,
        },
        lambda c, r: succeed({"passed": True}),
    )
    table["hello"](None, None)
    d = table["slow"](None, None)
    clock.advance(2)
    slow.callback({"done": True})
    assert d.result == {"done": True}
    table["missing"](None, None).addErrback(lambda f: f.trap(NotFound))
    table["broken"](None, None).addErrback(lambda f: f.trap(ZeroDivisionError))
    fallback(None, None)
    assert value(metrics, "pi_server_request_duration_seconds_count", method="slow") == 1
    assert value(metrics, "pi_server_request_duration_seconds_sum", method="slow") == 2
    assert value(metrics, "pi_server_request_duration_seconds_bucket", method="slow", le="1.0") == 0
    assert value(metrics, "pi_server_request_duration_seconds_count", method="pass_through") == 1
    assert value(metrics, "pi_server_errors_total", code="not_found") == 1
    assert value(metrics, "pi_server_errors_total", code="internal_error") == 1


class FakeSession:
    def __init__(self, status, streaming=False, journal_bytes=0):
        self._status = status
        self.streaming = streaming
        self.stream = type("S", (), {"journal_bytes": journal_bytes})()

    def status(self):
        return self._status


def test_live_gauges():
    metrics = ServerMetrics(Clock())
    hub = type("H", (), {"connections": {"a": 1, "b": 2}})()
    sessions = type(
        "M",
        (),
        {
            "sessions": {
                "1": FakeSession("running", streaming=True, journal_bytes=100),
                "2": FakeSession("running", journal_bytes=50),
                "3": FakeSession("stopped", journal_bytes=7),
                "4": FakeSession("starting"),
            }
        },
    )()
    metrics.watch(hub, sessions)
    assert [session_state(s) for s in sessions.sessions.values()] == [
        "running",
        "idle",
        "stopped",
        "starting",
    ]
    assert value(metrics, "pi_server_connections") == 2
    assert value(metrics, "pi_server_sessions", state="idle") == 1
    assert value(metrics, "pi_server_agents", state="running") == 1
    assert value(metrics, "pi_server_agents", state="warm") == 2
    assert value(metrics, "pi_server_journal_bytes") == 157


def test_readiness(tmp_path):
    (tmp_path / "sessions").mkdir()
    assert readiness(("/bin/sh",), tmp_path) == {"agentCommand": True, "dataDir": True}
    assert readiness(("/nonexistent/pi",), tmp_path)["agentCommand"] is False
    assert readiness(("/bin/sh",), tmp_path / "gone")["dataDir"] is False
