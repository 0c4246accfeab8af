"""Usage accounting (sessions/usage.py, accounting.py), budgets (sessions/budgets.py) and
their wire methods (api/usage.py), on a fake clock and fake sessions."""

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from piserver.api.usage import UsageMethods
from piserver.common.errors import BudgetExceeded, InvalidParams
from piserver.ops.metrics import UsageCollector
from piserver.security.scopes import Grant
from piserver.sessions import usage as usage_module
from piserver.sessions.accounting import Accounting
from piserver.sessions.budgets import Budgets, DailyLimits, parse_budget
from piserver.sessions.observer import RunWatcher
from piserver.sessions.usage import (
    SERVER_DEVICE,
    Usage,
    UsageLedger,
    message_usage,
    parse_day,
)
from piserver.wire.envelope import Request
from tests.support.fakesessions import FakeSessions

PARIS = ZoneInfo("Europe/Paris")


def at(text: str) -> float:
    """Clock seconds of a UTC time ``YYYY-MM-DDTHH:MM:SS``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def clock_at(text: str) -> Clock:
    clock = Clock()
    clock.advance(at(text))
    return clock


def assistant(model="fake-1", input=100, output=10, cache_read=0, cost=0.01, provider="fake"):
    return {
        "role": "assistant",
        "provider": provider,
        "model": model,
        "content": [{"type": "text", "text": "hi"}],
        "usage": {
            "input": input,
            "output": output,
            "cacheRead": cache_read,
            "cacheWrite": 0,
            "totalTokens": input + output + cache_read,
            "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "total": cost},
        },
    }


def message_end(accounting, session, message):
    """pi's message_end, read as the session manager reads every event but the updates."""
    RunWatcher(accounting).event(session, "message_end", {"message": message})


def event(observer, session, event_type):
    RunWatcher(observer).event(session, event_type, {"type": event_type})


NO_LIMITS = DailyLimits()


def setup(tmp_path, clock, daily=NO_LIMITS, sessions=("a", "b"), timezone=UTC):
    ledger = UsageLedger(tmp_path / "usage.json", clock, timezone)
    ledger.load()
    fake = FakeSessions(*sessions)
    accounting = Accounting(ledger)
    budgets = Budgets(ledger, fake, daily)
    accounting.on_recorded.append(budgets.recorded)
    return ledger, accounting, budgets, fake


# -- accounting ----------------------------------------------------------------------


def test_usage_of_untrusted_messages():
    assert message_usage({"role": "user", "usage": {}}) is None
    assert message_usage({"role": "assistant"}) is None
    model, usage = message_usage(
        {
            "role": "assistant",
            "provider": "p",
            "model": "m",
            "usage": {"input": -5, "output": "many", "cacheRead": 1e300, "cost": {"total": "x"}},
        }
    )
    assert model == "p/m"
    assert usage.input == 0 and usage.output == 0 and usage.cost_usd == 0.0
    assert usage.cache_read == 10**12


def test_totals_by_session_day_model_and_device(tmp_path):
    clock = clock_at("2026-12-02T10:00:00")
    ledger, accounting, _budgets, fake = setup(tmp_path, clock)
    a, b = fake.sessions["a"], fake.sessions["b"]
    accounting.run_started_by("a", "phone")
    message_end(accounting, a, assistant("fake-1", 100, 10, cost=0.01))
    message_end(accounting, a, assistant("fake-2", 200, 20, cache_read=5, cost=0.02))
    message_end(accounting, b, assistant("fake-1", 1000, 100, cost=0.1))
    # Only assistant messages count.
    message_end(accounting, a, {"role": "toolResult", "usage": {"input": 9}})
    assert ledger.session_total("a").to_wire() == {
        "input": 300,
        "output": 30,
        "cacheRead": 5,
        "cacheWrite": 0,
        "totalTokens": 335,
        "costUsd": 0.03,
    }
    assert ledger.day_total() == ledger.session_total("a") + ledger.session_total("b")
    by_model = dict(ledger.report("model"))
    assert by_model["fake/fake-1"].input == 1100 and by_model["fake/fake-2"].input == 200
    by_device = dict(ledger.report("device"))
    assert by_device["phone"].total_tokens == 335
    assert by_device[SERVER_DEVICE].total_tokens == 1100
    assert [key for key, _ in ledger.report("session")] == ["a", "b"]
    assert [key for key, _ in ledger.report("day")] == ["2026-12-02"]
    assert ledger.report("day", first="2026-12-03") == []
    assert ledger.report("day", last="2026-12-01") == []


def test_totals_survive_a_new_ledger_and_a_deleted_session_stays_in_the_day(tmp_path):
    clock = clock_at("2026-12-02T10:00:00")
    ledger, accounting, _budgets, fake = setup(tmp_path, clock)
    message_end(accounting, fake.sessions["a"], assistant(cost=0.5))
    # On disk at once: one line appended to the log after usage.json's totals.
    (logged,) = (tmp_path / "usage.json.1.log").read_text().splitlines()
    assert json.loads(logged)["usage"]["costUsd"] == 0.5
    again = UsageLedger(tmp_path / "usage.json", clock, UTC)
    again.load()
    assert again.session_total("a") == ledger.session_total("a")
    assert again.day_total().cost_usd == 0.5


def test_the_log_is_compacted_and_a_torn_line_or_a_crash_between_counts_nothing_twice(
    tmp_path, monkeypatch
):
    clock = clock_at("2026-12-02T10:00:00")
    monkeypatch.setattr(usage_module, "COMPACT_EVERY", 3)
    ledger, accounting, _budgets, fake = setup(tmp_path, clock)
    for _ in range(4):
        message_end(accounting, fake.sessions["a"], assistant(cost=0.25))
    assert ledger.warn_once("day:x")
    # Three lines made generation 2's usage.json; the fourth and the warning are in its log.
    assert json.loads((tmp_path / "usage.json").read_text())["generation"] == 2
    assert len((tmp_path / "usage.json.2.log").read_text().splitlines()) == 2
    assert not (tmp_path / "usage.json.1.log").exists()
    # A kill -9 mid-line: the torn line is skipped, the rest counts once.
    with open(tmp_path / "usage.json.2.log", "a") as log:
        log.write('{"day":"2026-12-02","mod')
    # A crash after a new usage.json but before its old log went: that log is not replayed.
    (tmp_path / "usage.json.1.log").write_text(
        json.dumps({"day": "2026-12-02", "model": "m", "sessionId": "a", "device": "d"}) + "\n"
    )
    ledger.close()
    again = UsageLedger(tmp_path / "usage.json", clock, UTC)
    again.load()
    assert again.session_total("a").cost_usd == 1.0
    assert not again.warn_once("day:x")
    assert sorted(p.name for p in tmp_path.glob("usage.json.*.log")) == []
    again.close()


@pytest.mark.parametrize(
    "document",
    [{"rows": 5}, {"rows": ["x", {"day": 1}], "warned": 3}, {"rows": [{"day": "d"}]}],
)
def test_bad_rows_are_skipped(tmp_path, document):
    (tmp_path / "usage.json").write_text(json.dumps(document))
    ledger = UsageLedger(tmp_path / "usage.json", Clock(), UTC)
    ledger.load()
    assert ledger.report("day") == []


def test_a_corrupt_ledger_is_moved_aside_and_counting_goes_on(tmp_path):
    (tmp_path / "usage.json").write_text("{not json")
    ledger = UsageLedger(tmp_path / "usage.json", Clock(), UTC)
    ledger.load()
    assert ledger.day_total() == Usage()
    assert any(p.name.startswith("usage.json.corrupt") for p in tmp_path.iterdir())


def test_days_follow_the_budget_timezone(tmp_path):
    # 22:59:59 UTC is 23:59:59 in Paris (winter): the Paris day ends a second later.
    clock = clock_at("2026-12-02T22:59:59")
    ledger, accounting, _budgets, fake = setup(tmp_path, clock, timezone=PARIS)
    message_end(accounting, fake.sessions["a"], assistant(cost=1.0))
    assert ledger.today() == "2026-12-02"
    assert ledger.next_day_starts() == at("2026-12-02T23:00:00")
    clock.advance(2)
    assert ledger.today() == "2026-12-03"
    assert ledger.day_total() == Usage()
    assert ledger.day_total("2026-12-02").cost_usd == 1.0


def test_metrics_read_the_ledger(tmp_path):
    ledger, accounting, _budgets, fake = setup(tmp_path, Clock())
    message_end(accounting, fake.sessions["a"], assistant("fake-1", 100, 10, cost=0.25))
    registry = CollectorRegistry()
    registry.register(UsageCollector(ledger))
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert found[("pi_server_tokens_total", (("kind", "input"), ("model", "fake/fake-1")))] == 100
    assert found[("pi_server_tokens_total", (("kind", "output"), ("model", "fake/fake-1")))] == 10
    assert found[("pi_server_cost_usd_total", (("model", "fake/fake-1"),))] == 0.25


def test_parameters():
    assert parse_day("2026-12-02", "from") == "2026-12-02"
    for bad in ("2026-13-01", "yesterday", 20261202, "2026-12-2"):
        with pytest.raises(InvalidParams):
            parse_day(bad, "from")
    assert parse_budget(None) is None
    assert parse_budget(2) == 2.0
    for bad in (0, -1, "1", True, float("inf"), float("nan")):
        with pytest.raises(InvalidParams):
            parse_budget(bad)


# -- budgets -------------------------------------------------------------------------


def test_a_session_budget_stops_its_run_and_refuses_prompts_until_raised(tmp_path):
    _ledger, accounting, budgets, fake = setup(tmp_path, Clock())
    notified = []
    budgets.notifiers.append(
        lambda event, session, summary: notified.append((event, session.id, summary))
    )
    a, b = fake.sessions["a"], fake.sessions["b"]
    budgets.set_session_budget(a, 1.0)
    assert fake.saved == ["a"] and a.budget_usd == 1.0
    a.streaming = b.streaming = True
    event(budgets, a, "agent_start")
    message_end(accounting, a, assistant(cost=0.5))
    assert fake.published == [] and fake.commands == []
    message_end(accounting, a, assistant(cost=0.6))
    assert fake.commands == [("a", "abort")]
    [(sid, reached)] = fake.events("budget_reached")
    assert sid == "a"
    assert reached == {
        "type": "budget_reached",
        "scope": "session",
        "spentUsd": 1.1,
        "limitUsd": 1.0,
        "resetsAt": None,
    }
    assert notified == [
        (
            "budget_reached",
            "a",
            "the session's budget of $1.00 is spent ($1.10); the run was stopped",
        )
    ]
    # The aborted message ends the run: still one budget_reached, one abort.
    message_end(accounting, a, assistant(cost=0.01))
    assert len(fake.events("budget_reached")) == 1 and len(fake.commands) == 1
    with pytest.raises(BudgetExceeded) as refused:
        budgets.admit(a)
    assert refused.value.code == "budget_exceeded"
    budgets.admit(b)
    budgets.set_session_budget(a, 5.0)
    budgets.admit(a)


def test_the_warning_comes_once_at_80_percent(tmp_path):
    ledger, accounting, budgets, fake = setup(tmp_path, Clock())
    notified = []
    budgets.notifiers.append(lambda event, session, summary: notified.append((event, summary)))
    a = fake.sessions["a"]
    budgets.set_session_budget(a, 1.0)
    message_end(accounting, a, assistant(cost=0.79))
    assert fake.events("budget_warning") == []
    message_end(accounting, a, assistant(cost=0.05))
    message_end(accounting, a, assistant(cost=0.05))
    [(_sid, warning)] = fake.events("budget_warning")
    assert warning["scope"] == "session" and warning["spentUsd"] == 0.84
    assert [event for event, _ in notified] == ["budget_warning"]
    assert "84% of the session's budget" in notified[0][1]
    # Once, also across a restart (the warning is kept in the ledger).
    again = UsageLedger(ledger.path, Clock(), UTC)
    again.load()
    assert not again.warn_once(f"session:a:{1.0}")


def test_the_daily_budget_stops_every_session_and_resets_at_midnight(tmp_path):
    clock = clock_at("2026-12-02T22:00:00")
    _ledger, accounting, budgets, fake = setup(
        tmp_path, clock, DailyLimits(usd=2.0), sessions=("a", "b", "c"), timezone=PARIS
    )
    a, b, c = (fake.sessions[i] for i in "abc")
    a.streaming = b.streaming = True
    message_end(accounting, a, assistant(cost=1.7))
    assert fake.commands == [] and len(fake.events("budget_warning")) == 1
    message_end(accounting, b, assistant(cost=0.5))
    assert sorted(fake.commands) == [("a", "abort"), ("b", "abort")]
    reached = fake.events("budget_reached")
    assert sorted(sid for sid, _ in reached) == ["a", "b"]
    assert reached[0][1]["scope"] == "day"
    assert reached[0][1]["limitUsd"] == 2.0
    assert reached[0][1]["resetsAt"] == "2026-12-02T23:00:00Z"
    for session in (a, b, c):
        with pytest.raises(BudgetExceeded, match="resets at 2026-12-02T23:00:00Z"):
            budgets.admit(session)
    [(_sid, warning)] = fake.events("budget_warning")
    assert warning["scope"] == "day"
    clock.advance(at("2026-12-02T23:00:00") - clock.seconds())
    for session in (a, b, c):
        budgets.admit(session)
    assert budgets.today()["usage"]["costUsd"] == 0


def test_the_daily_token_budget(tmp_path):
    _ledger, accounting, budgets, fake = setup(tmp_path, Clock(), DailyLimits(tokens=1000))
    a = fake.sessions["a"]
    a.streaming = True
    message_end(accounting, a, assistant(input=900, output=0, cost=0))
    [(_sid, warning)] = fake.events("budget_warning")
    assert warning["spentTokens"] == 900 and warning["limitTokens"] == 1000
    message_end(accounting, a, assistant(input=100, output=0, cost=0))
    [(_sid, reached)] = fake.events("budget_reached")
    assert reached["limitUsd"] is None and reached["limitTokens"] == 1000
    assert fake.commands == [("a", "abort")]
    with pytest.raises(BudgetExceeded, match="1000 tokens"):
        budgets.admit(a)


def test_a_new_run_over_budget_is_stopped_again(tmp_path):
    # A run that got in (steered before the check, say) is stopped at its first message.
    _ledger, accounting, budgets, fake = setup(tmp_path, Clock())
    a = fake.sessions["a"]
    budgets.set_session_budget(a, 0.1)
    a.streaming = True
    message_end(accounting, a, assistant(cost=0.2))
    event(budgets, a, "agent_start")
    message_end(accounting, a, assistant(cost=0.2))
    assert fake.commands == [("a", "abort"), ("a", "abort")]


# -- the wire methods ----------------------------------------------------------------


class _Connection:
    def __init__(self, device):
        self.device = device


def request(method, params, session_id=None):
    return Request("r1", method, params, session_id)


def test_usage_methods(tmp_path):
    ledger, accounting, budgets, fake = setup(tmp_path, clock_at("2026-12-02T10:00:00"))
    methods = UsageMethods(fake, accounting, budgets)
    a, b = fake.sessions["a"], fake.sessions["b"]
    methods.admit(_Connection("phone"), a)
    b.streaming = True
    accounting.run_started_by("b", "tablet")
    # A steer into b's run leaves it to the tablet.
    methods.admit(_Connection("phone"), b)
    message_end(accounting, a, assistant(cost=0.25))
    message_end(accounting, b, assistant(cost=0.5))
    rows = methods.report(None, request("usage.report", {"by": "device"}))["rows"]
    assert [(r["key"], r["usage"]["costUsd"]) for r in rows] == [("phone", 0.25), ("tablet", 0.5)]
    rows = methods.report(None, request("usage.report", {"by": "day", "to": "2026-12-01"}))
    assert rows == {"rows": []}
    for params in ({}, {"by": "week"}, {"by": "day", "from": "today"}):
        with pytest.raises(InvalidParams):
            methods.report(None, request("usage.report", params))

    with pytest.raises(InvalidParams, match="budgetUsd"):
        methods.set_budget(None, request("session.set_budget", {"sessionId": "a"}))
    answer = methods.set_budget(
        None, request("session.set_budget", {"sessionId": "a", "budgetUsd": 0.2})
    )
    assert answer == {"usage": ledger.session_total("a").to_wire(), "budgetUsd": 0.2}
    with pytest.raises(BudgetExceeded):
        methods.admit(_Connection("phone"), a)
    methods.set_budget(None, request("session.set_budget", {"sessionId": "a", "budgetUsd": None}))
    methods.admit(_Connection("phone"), a)

    listed = methods.with_usage([{"sessionId": "a"}, {"sessionId": "gone"}])
    assert listed["sessions"][0]["usage"]["costUsd"] == 0.25
    assert listed["sessions"][1] == {
        "sessionId": "gone",
        "usage": Usage().to_wire(),
        "budgetUsd": None,
    }
    assert listed["today"]["usage"]["costUsd"] == 0.75
    assert listed["today"]["resetsAt"] == "2026-12-03T00:00:00Z"


def test_usage_is_told_once_per_message_never_per_update(tmp_path):
    ledger, accounting, _budgets, fake = setup(tmp_path, Clock())
    heard = []
    accounting.on_recorded.append(lambda session: heard.append(session.id))
    runs = RunWatcher(accounting)
    a = fake.sessions["a"]
    message = assistant(cost=0.5)
    for _ in range(100):
        runs.event(a, "message_update", {"type": "message_update", "message": message})
    # Nothing was written for the updates: what a message adds goes to the log.
    assert heard == [] and not (tmp_path / "usage.json.1.log").exists()
    runs.event(a, "message_end", {"type": "message_end", "message": message})
    assert heard == ["a"] and ledger.session_total("a").cost_usd == 0.5


class _Granted:
    def __init__(self, grant):
        self.grant = grant
        self.device = grant.device


def test_a_device_with_a_narrow_reach_sees_only_its_sessions_usage(tmp_path):
    _ledger, accounting, budgets, fake = setup(tmp_path, Clock())
    methods = UsageMethods(fake, accounting, budgets)
    a, b = fake.sessions["a"], fake.sessions["b"]
    a.device = "phone"
    message_end(accounting, a, assistant(cost=0.25))
    message_end(accounting, b, assistant(cost=0.5))
    phone = _Granted(Grant(device="phone", own_sessions=True))
    rows = methods.report(phone, request("usage.report", {"by": "session"}))["rows"]
    assert [r["key"] for r in rows] == ["a"]
    everyone = methods.report(None, request("usage.report", {"by": "session"}))["rows"]
    assert [r["key"] for r in everyone] == ["a", "b"]
