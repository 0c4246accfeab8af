"""
Warm creates while a file in the data dir changes all the time (issue 21, point 18):
``python -m bench.warmcreate [--rounds N]``.

One pi-server (``--warm-agents 1``, unsandboxed) over the scripted LLM, its data dir
holding a log file that another process appends a line to every
``WRITE_INTERVAL`` seconds (``twistd --logfile`` in the data dir does the like). Rounds
alternate between the writer running and the writer stopped (SIGSTOP: the baseline, in
the same run); each waits until the pool's agent is ready (as a person does not create
sessions back to back within a second), times a bare ``session.create`` of a chat
session and deletes the session. Goal: p99 <= 15 ms with the writer.

Then a forced discard: pi's ``settings.json`` is changed while an agent waits, so the
next create cannot take it (that create starts a cold pi); the pool must fill again by
itself, and the creates after it be warm again.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

from tests.support.piagent import PiNotInstalled, locate_pi, write_agent_dir

from .lifecycle import spare_ready
from .report import Table, duration
from .rig import TOKEN, LlmProcess, Machine, ServerProcess, median, percentile
from .wsclient import connect

GOAL = 0.015
WRITE_INTERVAL = 0.002
LOG_NAME = "pi-server.log"
AFTER_DISCARD = 5
# A create that takes longer did not get a warm agent: a cold pi takes 270 ms and more.
WARM_BOUND = 0.1
# A line a second's worth of log: what an access log line looks like.
WRITER = """
import sys, time
line = b'"127.0.0.1" - - [02/Dec/2026:16:00:00 +0000] "GET /health HTTP/1.1" 200 33 "-" "-"\\n'
with open(sys.argv[1], "ab", buffering=0) as log:
    while True:
        log.write(line)
        time.sleep(float(sys.argv[2]))
"""


class Writer:
    """The process appending to the log file; stopped and continued between rounds."""

    def __init__(self, path: Path):
        self.path = path
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(WRITE_INTERVAL)],
            stdin=subprocess.DEVNULL,
        )
        self.running = True

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        self.running = False

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.running = True

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(30)


async def timed_create(reactor, server, client) -> float:
    await spare_ready(reactor, server.port)
    start = time.perf_counter()
    created = await client.call("session.create", {"mode": "chat"})
    took = time.perf_counter() - start
    await client.call("session.delete", session_id=created["sessionId"])
    return took


async def measure(reactor, work: Path, pi: tuple[str, ...], rounds: int, environ: dict) -> dict:
    llm = await LlmProcess.start(reactor, environ)
    agent_dir = write_agent_dir(work, llm.base_url)
    server = client = writer = None
    try:
        server = await ServerProcess.start(
            reactor,
            agent_dir.path,
            pi,
            agent_dir.environment(),
            extra_args=["--warm-agents", "1", "--sandbox", "none"],
        )
        client = await connect(reactor, server.port, TOKEN, "delta")
        log = agent_dir.path / LOG_NAME
        writer = Writer(log)
        # Warm-up: pi's first starts are slower, and the writer gets going.
        for _ in range(2):
            await timed_create(reactor, server, client)
        times = {"writing": [], "quiet": []}
        size_before = log.stat().st_size
        for number in range(2 * rounds):
            writing = number % 2 == 0
            if writing != writer.running:
                writer.resume() if writing else writer.pause()
            times["writing" if writing else "quiet"].append(
                await timed_create(reactor, server, client)
            )
        writer.resume()
        written = log.stat().st_size - size_before
        # A forced discard: pi's configuration changes while the pool's agent waits.
        await spare_ready(reactor, server.port)
        settings = agent_dir.settings_path
        settings.write_text(settings.read_text() + "\n", encoding="utf-8")
        start = time.perf_counter()
        created = await client.call("session.create", {"mode": "chat"})
        discarded_create = time.perf_counter() - start
        await client.call("session.delete", session_id=created["sessionId"])
        start = time.perf_counter()
        await spare_ready(reactor, server.port)
        refilled = time.perf_counter() - start
        after = [await timed_create(reactor, server, client) for _ in range(AFTER_DISCARD)]
        return {
            "times": times,
            "written": written,
            "discarded_create": discarded_create,
            "refilled": refilled,
            "after": after,
        }
    finally:
        if writer is not None:
            writer.stop()
        if client is not None:
            await client.close()
        if server is not None:
            await server.stop()
        await llm.stop()


def goal_lines(measured: dict) -> list[str]:
    """Issue 21's goal for warm creates, with this run's figures."""
    writing = measured["times"]["writing"]
    quiet = measured["times"]["quiet"]
    p99 = percentile(writing, 0.99)
    after = measured["after"]
    return [
        f"`session.create` with warm agents while a file in the data dir is appended to every "
        f"{WRITE_INTERVAL * 1e3:g} ms, p99 ≤ {GOAL * 1e3:g} ms: **{duration(p99)}** "
        f"({'met' if p99 <= GOAL else 'not met'}; p50 {duration(median(writing))}); without "
        f"the writer, in the same run: p99 {duration(percentile(quiet, 0.99))}, p50 "
        f"{duration(median(quiet))}.",
        f"After a forced discard (pi's `settings.json` changed while an agent waited) the "
        f"create took {duration(measured['discarded_create'])} (a cold pi), the pool was "
        f"ready again {duration(measured['refilled'])} later, and the {len(after)} creates "
        f"after it took p50 {duration(median(after))}, at most {duration(max(after))} "
        f"({'warm again' if max(after) < WARM_BOUND else 'not all warm'}: a cold pi takes "
        f"hundreds of ms).",
    ]


def table(measured: dict, machine: Machine, rounds: int) -> Table:
    rows = []
    for name, label in (("writing", "a log file appended to"), ("quiet", "nothing written")):
        values = measured["times"][name]
        rows.append(
            (
                f"create, {label}",
                duration(median(values)),
                duration(percentile(values, 0.9)),
                duration(percentile(values, 0.99)),
                duration(max(values)),
            )
        )
    after = measured["after"]
    rows.append(
        (
            "create after a forced discard (pool refilled)",
            duration(median(after)),
            duration(percentile(after, 0.9)),
            duration(percentile(after, 0.99)),
            duration(max(after)),
        )
    )
    return Table(
        title="Warm creates while the data dir changes (--warm-agents 1)",
        columns=("step", "p50", "p90", "p99", "max"),
        rows=tuple(rows),
        notes=(
            f"{rounds} creates with the writer and {rounds} without, alternating, on "
            f"{machine.cores} cores ({machine.cpu}), pi {machine.pi_version}, {machine.date}, "
            f"load {machine.load}. The writer appended {measured['written'] / 1e6:.1f} MB "
            f"to `{LOG_NAME}` in the data dir, a line every {WRITE_INTERVAL * 1e3:g} ms while "
            "it ran. Each create waits until the pool's agent is ready. The create that "
            f"found pi's configuration changed took {duration(measured['discarded_create'])}; "
            f"the pool was ready again {duration(measured['refilled'])} after it.",
        ),
    )


async def run(reactor, rounds: int) -> tuple[Table, list[str]]:
    try:
        pi = locate_pi()
    except PiNotInstalled as missing:
        sys.exit(str(missing))
    machine = Machine.describe(pi)
    work = Path(tempfile.mkdtemp(prefix="bench-warmcreate-"))
    try:
        measured = await measure(reactor, work, pi, rounds, dict(os.environ))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return table(measured, machine, rounds), goal_lines(measured)


async def main(reactor, argv) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.warmcreate", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument(
        "--rounds", type=int, default=100, help="creates with the writer, and without [%(default)s]"
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown instead")
    options = parser.parse_args(argv)
    result, lines = await run(reactor, options.rounds)
    if options.markdown:
        sys.stdout.write(result.markdown() + "\n\n" + "".join(f"- {line}\n" for line in lines))
    else:
        sys.stdout.write(result.text() + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
