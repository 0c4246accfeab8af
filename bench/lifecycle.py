"""
How fast a session starts: ``python -m bench.lifecycle [--rounds N]``.

Two pi-servers in processes of their own over the same scripted LLM: one with the
default ``--warm-agents 1`` and one with ``--warm-agents 0`` (every create starts a cold
pi). Each round, on each server in turn: a bare ``session.create`` of a chat session;
then the iOS app's create (with a system prompt) followed at once by a prompt, timed
from the create request to the first streamed token (``message_update``) and to
``agent_settled``. On the warm server each create waits until the pool's agent is
ready again (``pi_server_agents{state="spare"}`` of ``/metrics``): a person does not
create sessions back to back within a second. The baseline is pi read directly: a
pi kept warm, timed from its prompt command to its first ``message_update``.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import treq
from twisted.internet import defer, task

from tests.support.piagent import PiNotInstalled, locate_pi, write_agent_dir

from .report import Table, duration
from .rig import (
    LlmProcess,
    Machine,
    chat_agent_args,
    median,
    percentile,
    servers_taking_turns,
    spawn_reader,
)

# Unsandboxed, as pi read directly is: what bubblewrap adds to a start is bench/sandbox.py's.
SERVERS = {
    "warm": ["--warm-agents", "1", "--sandbox", "none"],
    "cold": ["--warm-agents", "0", "--sandbox", "none"],
}
SYSTEM_PROMPT = "You are a helpful assistant on a phone."
SPARE_LINE = b'pi_server_agents{state="spare"} 1.0'
SPARE_DEADLINE = 60.0
# How long a pi read directly runs before its first prompt (a warm agent has been ready a
# while when a create takes it).
PI_READY_PAUSE = 0.5


async def spare_ready(reactor, port: int) -> None:
    """Until the warm pool's agent is ready (polling /metrics, with a deadline)."""
    deadline = time.monotonic() + SPARE_DEADLINE
    while time.monotonic() < deadline:
        response = await treq.get(f"http://127.0.0.1:{port}/metrics")
        if SPARE_LINE in await response.content():
            return
        await task.deferLater(reactor, 0.05)
    raise RuntimeError("the warm agent did not become ready")


async def one_round(reactor, name: str, server, client) -> dict:
    figures = {}
    if name == "warm":
        await spare_ready(reactor, server.port)
    start = time.perf_counter()
    created = await client.call("session.create", {"mode": "chat"})
    figures["create"] = time.perf_counter() - start
    await client.call("session.delete", session_id=created["sessionId"])
    if name == "warm":
        await spare_ready(reactor, server.port)
    first_token = client.until_type("message_update")
    start = time.perf_counter()
    created = await client.call("session.create", {"mode": "chat", "systemPrompt": SYSTEM_PROMPT})
    figures["create with a system prompt"] = time.perf_counter() - start
    session_id = created["sessionId"]
    await client.call("prompt", {"message": "hi"}, session_id=session_id)
    figures["create to first token"] = await first_token - start
    await client.until_type("agent_settled")
    await client.call("session.delete", session_id=session_id)
    return figures


async def pi_first_tokens(reactor, work: Path, pi, environ: dict, number: int) -> dict:
    """pi's own prompt-to-first-token times, in a pi started ahead (as a warm agent is):
    its first run, and the run after it."""
    session_dir = work / f"direct-{number}"
    session_dir.mkdir()
    reader = spawn_reader(
        reactor,
        time.perf_counter,
        [*pi, *chat_agent_args(session_dir)],
        environ,
        session_dir,
        watch=("agent_settled", "message_update"),
    )
    took = {}
    try:
        reader.send({"id": "state", "type": "get_state"})
        await reader.until_lines(1)
        await task.deferLater(reactor, PI_READY_PAUSE)  # as a warm agent waits for its session
        for run, name in enumerate(("first run", "second run")):
            updates = reader.count("message_update")
            start = time.perf_counter()
            reader.send({"id": f"p{run}", "type": "prompt", "message": "hi"})
            took[name] = await reader.until_event("message_update", updates + 1) - start
            await reader.until_event("agent_settled", run + 1)
    finally:
        await reader.stop()
    return took


async def measure(
    reactor, work: Path, pi: tuple[str, ...], rounds: int, warmup: int, environ: dict
) -> dict:
    llm = await LlmProcess.start(reactor, environ)
    try:
        runs = await servers_taking_turns(
            reactor,
            work,
            pi,
            llm,
            SERVERS,
            lambda name, server, client: one_round(reactor, name, server, client),
            rounds,
            warmup,
            event_mode="delta",
        )
        direct_dir = write_agent_dir(work / "pi", llm.base_url)
        runs["pi"] = [
            await pi_first_tokens(reactor, work, pi, direct_dir.environment(), number)
            for number in range(rounds)
        ]
        return runs
    finally:
        await llm.stop()


def table(runs: dict, machine: Machine, rounds: int) -> Table:
    rows = []
    for what in ("create", "create with a system prompt", "create to first token"):
        warm = [r[what] for r in runs["warm"]]
        cold = [r[what] for r in runs["cold"]]
        rows.append(
            (
                what,
                duration(median(warm)),
                duration(percentile(warm, 0.9)),
                duration(median(cold)),
                duration(percentile(cold, 0.9)),
            )
        )
    pi_runs = {name: [r[name] for r in runs["pi"]] for name in ("first run", "second run")}
    for name, label in (("first run", "first prompt"), ("second run", "second prompt")):
        rows.append(
            (
                f"pi read directly, started ahead: {label} to first token",
                duration(median(pi_runs[name])),
                duration(percentile(pi_runs[name], 0.9)),
                "",
                "",
            )
        )
    warm_first = median(r["create to first token"] for r in runs["warm"])
    first_run, second_run = median(pi_runs["first run"]), median(pi_runs["second run"])
    return Table(
        title="Session start: warm agents (--warm-agents 1) against cold (--warm-agents 0)",
        columns=("step", "warm p50", "warm p90", "cold p50", "cold p90"),
        rows=tuple(rows),
        notes=(
            f"{rounds} rounds per server, taking turns, on {machine.cores} cores "
            f"({machine.cpu}), pi {machine.pi_version}, {machine.date}, load {machine.load}. "
            "`create` is a bare `session.create` of a chat session, `create with a system "
            "prompt` the iOS app's; `create to first token` runs from that create's request "
            "to the first streamed token of the prompt sent right after it. Agents run "
            "unsandboxed here, as pi read directly does (`bench/sandbox.py` measures what "
            "bubblewrap adds). pi read directly is a new pi each round, prompted "
            f"{PI_READY_PAUSE} s after it answered its start-up `get_state`. A new session's "
            f"first token comes {(warm_first - first_run) * 1e3:+.1f} ms after the first "
            f"token of a pi started ahead, {(warm_first - second_run) * 1e3:+.1f} ms after "
            "that of a pi in its second run.",
        ),
    )


async def run(reactor, rounds: int, warmup: int) -> Table:
    try:
        pi = locate_pi()
    except PiNotInstalled as missing:
        sys.exit(str(missing))
    machine = Machine.describe(pi)
    work = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    try:
        runs = await measure(reactor, work, pi, rounds, warmup, dict(os.environ))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return table(runs, machine, rounds)


async def main(reactor, argv) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lifecycle", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds [%(default)s]")
    parser.add_argument("--warmup", type=int, default=2, help="rounds before them [%(default)s]")
    parser.add_argument("--output", help="a Markdown file to append the table to")
    options = parser.parse_args(argv)
    result = await run(reactor, options.rounds, options.warmup)
    sys.stdout.write(result.text() + "\n")
    if options.output:
        with open(options.output, "a", encoding="utf-8") as f:
            f.write("\n" + result.markdown() + "\n")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
