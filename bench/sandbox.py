"""
What the bubblewrap sandbox costs: ``python -m bench.sandbox [--rounds N]``.

Two pi-servers in processes of their own, one with ``--sandbox none`` and one with
``--sandbox bwrap``, each over its own data dir and the same scripted LLM (in a
process of its own). Each round, on each server in turn: ``session.create`` of a
chat session (which returns once its agent, a cold pi, has answered its start-up
``get_state``), then two short prompts on it (the first run of a new agent, then a
warm one), timed from the request sent to ``agent_settled`` read, then
``session.delete``. Prints a table (p50 and p90 of each) and, with ``--output``,
appends it as Markdown to that file.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

from tests.support.piagent import PiNotInstalled, locate_pi

from .report import Table, duration
from .rig import LlmProcess, Machine, median, percentile, servers_taking_turns

MODES = ("none", "bwrap")


async def timed_prompt(client, session_id: str) -> float:
    settled = client.until_type("agent_settled")
    start = time.perf_counter()
    await client.call("prompt", {"message": "hi"}, session_id=session_id)
    return await settled - start


async def one_round(client) -> dict:
    start = time.perf_counter()
    created = await client.call("session.create", {"mode": "chat"})
    figures = {"create": time.perf_counter() - start}
    session_id = created["sessionId"]
    figures["first prompt"] = await timed_prompt(client, session_id)
    figures["warm prompt"] = await timed_prompt(client, session_id)
    await client.call("session.delete", session_id=session_id)
    return figures


async def measure(reactor, work: Path, pi: tuple[str, ...], rounds: int, warmup: int) -> dict:
    llm = await LlmProcess.start(reactor, dict(os.environ))
    try:
        return await servers_taking_turns(
            reactor,
            work,
            pi,
            llm,
            # Each create starts a cold pi: the one timed here.
            {mode: ["--sandbox", mode, "--warm-agents", "0"] for mode in MODES},
            lambda name, server, client: one_round(client),
            rounds,
            warmup,
        )
    finally:
        await llm.stop()


def table(runs: dict, machine: Machine, rounds: int) -> Table:
    rows = []
    for what in ("create", "first prompt", "warm prompt"):
        plain = [r[what] for r in runs["none"]]
        boxed = [r[what] for r in runs["bwrap"]]
        rows.append(
            (
                what,
                duration(median(plain)),
                duration(percentile(plain, 0.9)),
                duration(median(boxed)),
                duration(percentile(boxed, 0.9)),
                f"{(median(boxed) - median(plain)) * 1e3:+.1f} ms",
            )
        )
    return Table(
        title="Sandboxed agents: session start and a short prompt, bwrap against none",
        columns=("step", "none p50", "none p90", "bwrap p50", "bwrap p90", "p50 difference"),
        rows=tuple(rows),
        notes=(
            f"{rounds} rounds per server, taking turns, on {machine.cores} cores "
            f"({machine.cpu}), pi {machine.pi_version}, {machine.date}, load "
            f"{machine.load}. `create` is `session.create` of a chat session (a cold pi "
            "started and answering); a prompt is timed from the request to "
            "`agent_settled` (the scripted LLM answers `OK`).",
        ),
    )


async def main(reactor, argv) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sandbox", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds [%(default)s]")
    parser.add_argument("--warmup", type=int, default=2, help="rounds before them [%(default)s]")
    parser.add_argument("--output", help="a Markdown file to append the table to")
    options = parser.parse_args(argv)
    try:
        pi = locate_pi()
    except PiNotInstalled as missing:
        sys.exit(str(missing))
    if shutil.which("bwrap") is None:
        sys.exit("bwrap not found: scripts/install-bubblewrap installs it")
    machine = Machine.describe(pi)
    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    try:
        runs = await measure(reactor, work, pi, options.rounds, options.warmup)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = table(runs, machine, options.rounds)
    sys.stdout.write(result.text() + "\n")
    if options.output:
        with open(options.output, "a", encoding="utf-8") as f:
            f.write("\n" + result.markdown() + "\n")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
