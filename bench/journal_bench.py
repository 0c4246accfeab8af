"""Journal benchmark: ``python -m bench.journal_bench`` from the repository root (needs pi).

Records a real 2,000-token answer (pi against the scripted LLM), journals it and
prints, measured in this run: pi's event bytes vs their delta form vs the journal's
bytes on disk; the cost of ``append`` per event; the time to open the journal and to
replay 10,000 events (the answer journaled five times) in full and delta mode.
"""

import json
import statistics
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task, threads

from piserver.sessions.journal import Journal, JournalLimits
from tests.support.events.record import record

ANSWERS = 5
"""Answers journaled for the replay figures: 5 x ~2,013 events (pi 1.6)."""


def measure_appends(journal: Journal, stream: list[tuple[str, dict, bytes]]) -> list[float]:
    costs = []
    seq = journal.last_seq
    for event_type, payload, line in stream:
        seq += 1
        started = time.perf_counter()
        journal.append(seq, event_type, payload, line)
        costs.append(time.perf_counter() - started)
    return costs


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


async def run(reactor) -> None:
    lines = await record(reactor, "long_answer")
    stream = [(json.loads(line)["type"], json.loads(line), line) for line in lines]
    updates = [position for position, event in enumerate(stream) if event[0] == "message_update"]
    with tempfile.TemporaryDirectory() as root:
        journal = Journal(Path(root) / "one", reactor, JournalLimits())
        journal.open()
        costs = measure_appends(journal, stream)
        full_size = sum(len(line) for line in lines)
        delta_size = sum(len(payload) for _, _, payload in journal.replay(0, "delta"))
        print(f"2,000-token answer: {len(stream)} events")
        print(f"  pi's events (full mode): {full_size:,} bytes")
        print(f"  delta form:              {delta_size:,} bytes")
        print(
            f"  journal on disk:         {journal.disk_bytes:,} bytes "
            f"({journal.disk_bytes / delta_size:.2f}x delta, "
            f"{full_size / journal.disk_bytes:.2f}x fewer than full)"
        )
        print(
            f"append: mean {statistics.fmean(costs) * 1e6:.1f} us/event, "
            f"message_update mean {statistics.fmean(costs[p] for p in updates) * 1e6:.1f} us, "
            f"median {statistics.median(costs) * 1e6:.1f} us, max {max(costs) * 1e6:.0f} us"
        )
        journal.close()

        many = Journal(Path(root) / "many", reactor, JournalLimits())
        many.open()
        for _ in range(ANSWERS):
            measure_appends(many, stream)
        many.close()
        reopened = Journal(Path(root) / "many", reactor, JournalLimits())
        open_time, _ = timed(reopened.open)
        count = reopened.last_seq
        print(
            f"journal of {count:,} events, {reopened.disk_bytes:,} bytes: "
            f"open {open_time * 1e3:.0f} ms"
        )
        for mode in ("delta", "full"):
            elapsed, replayed = timed(reopened.replay, 0, mode)
            size = sum(len(payload) for _, _, payload in replayed)
            print(f"  replay {count:,} events, {mode} mode: {elapsed * 1e3:.0f} ms, {size:,} bytes")
        elapsed, _ = timed(reopened.replay, count - 100, "full")
        print(f"  replay the last 100 events, full mode: {elapsed * 1e3:.1f} ms")
        started = time.perf_counter()
        # As a session's catch-up runs it: segments opened now, read in the thread pool.
        read = reopened.prepared_replay(0, "full")
        await threads.deferToThreadPool(reactor, reactor.getThreadPool(), read)
        print(
            f"  prepared_replay in a thread, {count:,} events, full mode: "
            f"{(time.perf_counter() - started) * 1e3:.0f} ms"
        )
        reopened.close()


def main(reactor):
    return defer.ensureDeferred(run(reactor))


if __name__ == "__main__":
    task.react(main)
