"""
What idempotency keys cost a request: ``python -m bench.idempotency``.

A ``prompt`` frame with a fresh UUID as its id goes through a Connection and the
Dispatcher to a handler that answers at once, with the key store (its key log on disk,
in a temporary directory) and without; prints the p50 and p99 time per request of each
and the p50 added by the keys (issue 24 asks for at most 0.2 ms).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from piserver.wire.connection import Connection
from piserver.wire.dispatch import Dispatcher
from piserver.wire.idempotency import KEY_LOG, IdempotencyKeys


class Sink:
    def send_frame(self, data: bytes) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass


def frames(count: int) -> list[bytes]:
    message = "Please look at the failing test in tests/unit and fix it. " * 4
    return [
        json.dumps(
            {
                "v": 1,
                "kind": "request",
                "id": str(uuid.uuid4()).upper(),
                "sessionId": "3f1c8a52-7d7e-4a8b-9d4f-1b2c3d4e5f60",
                "method": "prompt",
                "params": {"type": "prompt", "message": message},
            }
        ).encode()
        for _ in range(count)
    ]


def timings(connection: Connection, payloads: list[bytes]) -> list[float]:
    spent = []
    for payload in payloads:
        started = time.perf_counter()
        connection.frame_received(payload)
        spent.append(time.perf_counter() - started)
    return spent


def measure(requests: int, rounds: int) -> dict:
    def handler(connection, request):
        return succeed({"disposition": "started"})

    without, with_keys, repeats = [], [], []
    with tempfile.TemporaryDirectory(prefix="pi-server-keys-") as directory:
        keys = IdempotencyKeys(Clock(), Path(directory) / KEY_LOG)
        plain = Connection("c1", Dispatcher({"prompt": handler}), Sink(), device="phone")
        keyed = Connection("c2", Dispatcher({"prompt": handler}, keys=keys), Sink(), device="phone")
        for _ in range(rounds):
            payloads = frames(requests)
            without += timings(plain, payloads)
            with_keys += timings(keyed, payloads)
            repeats += timings(keyed, payloads)
        keys.close()
    return {
        name: (statistics.median(values), statistics.quantiles(values, n=100)[98])
        for name, values in (("without", without), ("with", with_keys), ("repeat", repeats))
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.idempotency", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=2000, help="per round [%(default)s]")
    parser.add_argument("--rounds", type=int, default=5, help="[%(default)s]")
    options = parser.parse_args(argv)
    result = measure(options.requests, options.rounds)
    lines = ["| per request | p50 (ms) | p99 (ms) |", "|---|---|---|"]
    for name, label in (
        ("without", "no keys"),
        ("with", "a new key (key log on disk)"),
        ("repeat", "a repeat"),
    ):
        p50, p99 = result[name]
        lines.append(f"| {label} | {p50 * 1000:.3f} | {p99 * 1000:.3f} |")
    added = (result["with"][0] - result["without"][0]) * 1000
    lines.append(f"\nkey bookkeeping adds {added:.3f} ms per request (p50)")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
