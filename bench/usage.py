"""
What accounting costs per streamed token: ``python -m bench.usage``.

A session of a real ``SessionManager`` (fake agent process, fake clock) publishes pi's
per-token ``message_update`` events, as an answer streams, first with the observers a
server always has (metrics), then with usage accounting and budgets added; then
assistant ``message_end`` events, which accounting does read (and appends to the usage log
for). Prints the time per event of each, best of ``--repeats``, and how many times the
ledger was written while tokens streamed (never: accounting does not see them).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from twisted.internet.defer import ensureDeferred, maybeDeferred

from piserver.agents.supervisor import AgentSupervisor
from piserver.ops.metrics import ServerMetrics
from piserver.sessions import SessionManager, SessionSettings
from piserver.sessions.accounting import Accounting
from piserver.sessions.budgets import Budgets, DailyLimits
from piserver.sessions.index import StateStore
from piserver.sessions.usage import USAGE_FILE, UsageLedger
from tests.support.fakeprocess import FakeProcessReactor

USAGE = {
    "input": 1200,
    "output": 1,
    "cacheRead": 0,
    "cacheWrite": 0,
    "totalTokens": 1201,
    "cost": {"input": 0.0012, "output": 0.0, "cacheRead": 0, "cacheWrite": 0, "total": 0.0012},
}


class _Models:
    async def require(self, provider, model_id):
        return {"provider": provider, "id": model_id}


def _session(directory: Path):
    reactor = FakeProcessReactor()
    (directory / "sessions").mkdir()
    supervisor = AgentSupervisor(reactor, ["/bin/pi"], str(directory), {}, forbidden_env=())
    sessions = SessionManager(
        reactor,
        SessionSettings(data_dir=directory),
        supervisor,
        StateStore(directory / "state.json", reactor),
        _Models(),
        in_thread=maybeDeferred,
    )
    sessions.startService()
    d = ensureDeferred(sessions.create(None, "chat"))
    process = reactor.spawned[-1].process
    (get_state,) = [c for c in process.lines() if c["type"] == "get_state"]
    process.respond(get_state, {"model": {"provider": "fake", "id": "fake-1"}})
    return reactor, sessions, d.result


def _update(n: int) -> dict:
    # pi repeats the message so far, usage included, in every update.
    return {
        "type": "message_update",
        "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": f"tok{n} "},
        "message": {
            "role": "assistant",
            "provider": "fake",
            "model": "fake-1",
            "content": [{"type": "text", "text": "tok " * n}],
            "usage": USAGE,
        },
    }


def _end() -> dict:
    return {"type": "message_end", "message": {**_update(1)["message"], "role": "assistant"}}


def _round(sessions, session, events: list[dict]) -> float:
    started = time.perf_counter()
    for event in events:
        sessions.publish(session, event["type"], event)
    return (time.perf_counter() - started) / len(events)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.usage", description=__doc__)
    parser.add_argument("--events", type=int, default=5000, help="updates per round")
    parser.add_argument("--ends", type=int, default=200, help="message_end events per round")
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pi-server-usage-bench-") as directory:
        reactor, sessions, session = _session(Path(directory))
        metrics = ServerMetrics(reactor)
        sessions.observers.add(metrics)
        updates = [_update(n % 200) for n in range(options.events)]
        ledger = UsageLedger(Path(directory) / USAGE_FILE, reactor, ZoneInfo("UTC"))
        accounting = Accounting(ledger)
        budgets = Budgets(ledger, sessions, DailyLimits(usd=1e6))
        accounting.on_recorded.append(budgets.recorded)
        # Rounds without and with accounting take turns, so that neither gets the quieter
        # machine or the shorter journal; the best of each is kept.
        baseline = accounted = float("inf")
        for _ in range(options.repeats):
            baseline = min(baseline, _round(sessions, session, updates))
            sessions.observers.add(budgets)
            sessions.observers.add(accounting)
            accounted = min(accounted, _round(sessions, session, updates))
            sessions.observers.remove(accounting)
            sessions.observers.remove(budgets)
        # The ledger is written with the first message it records: none so far.
        written_while_streaming = any(Path(directory).glob(f"{USAGE_FILE}*"))
        sessions.observers.add(budgets)
        sessions.observers.add(accounting)
        ends = _round(sessions, session, [_end()] * options.ends)
        sessions.stopService()
    figures = {
        "message_update, metrics only (µs/event)": round(baseline * 1e6, 2),
        "message_update, with accounting and budgets (µs/event)": round(accounted * 1e6, 2),
        "usage.json written while tokens streamed": written_while_streaming,
        "message_end with accounting, ledger written (µs/event)": round(ends * 1e6, 1),
    }
    sys.stdout.write(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
