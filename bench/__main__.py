"""
``python -m bench``: run every benchmark, print the tables, write
docs/performance.md (see the package docstring).
"""

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

from piserver.sessions.stream import DEFAULT_MAX_REPLAY_BYTES, MAX_FULL_REPLAY_EVENTS
from piserver.wire.connection import DEFAULT_SEND_BUFFER_LIMIT
from tests.support.piagent import PiNotInstalled, locate_pi, repository_root

from . import document, idle, lifecycle, realpi, relay, report, resume, warmcreate
from .rig import Machine, median

QUICK = {
    "rounds": 2,
    "warmup": 1,
    "paced_rounds": 1,
    "repeats": 1,
    "relay_events": 1000,
    "clients": "1,10",
    "resume_events": 2000,
    "short_rounds": 5,
    "idle_sessions": 5,
    "idle_resumed": 2,
    "start_rounds": 2,
    "warm_create_rounds": 3,
}


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument(
        "--output",
        default=str(repository_root() / "docs" / "performance.md"),
        help="Markdown file to write, '-' for none [default: %(default)s]",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        # Each takes about a tenth of a second: enough of them for a median that the
        # shared cores' noise moves little.
        default=25,
        help="measured rounds of the real 2,000-token answer [%(default)s]",
    )
    parser.add_argument(
        "--warmup", type=int, default=4, help="warm-up rounds before them [%(default)s]"
    )
    parser.add_argument(
        "--paced-rounds",
        type=int,
        default=3,
        help="measured rounds of the paced answer [%(default)s]",
    )
    parser.add_argument(
        "--short-rounds",
        type=int,
        default=20,
        help="measured rounds of the short prompt (p50) [%(default)s]",
    )
    parser.add_argument(
        "--start-rounds",
        type=int,
        default=20,
        help="measured rounds of session start, warm and cold agents [%(default)s]",
    )
    parser.add_argument(
        "--warm-create-rounds",
        type=int,
        default=100,
        help="warm creates with a file in the data dir written continuously, and as many "
        "without [%(default)s]",
    )
    parser.add_argument(
        "--idle-sessions",
        type=int,
        default=50,
        help="sessions created, prompted once and left idle [%(default)s]",
    )
    parser.add_argument(
        "--idle-resumed",
        type=int,
        default=5,
        help="of those, sessions resumed and prompted again [%(default)s]",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each relay and resume figure (median) [%(default)s]",
    )
    parser.add_argument(
        "--relay-events",
        type=int,
        default=5_000,
        help="events the stub agent writes per relay run [%(default)s]",
    )
    parser.add_argument(
        "--clients",
        default="1,10,100",
        help="numbers of attached clients, comma-separated [%(default)s]",
    )
    parser.add_argument(
        "--resume-events",
        type=int,
        default=10_000,
        help="journaled events replayed on resume [%(default)s]",
    )
    parser.add_argument(
        "--paced-delay",
        type=float,
        default=0.005,
        help="seconds between tokens of the paced answer [%(default)s]",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes to check that the benchmarks run; writes nothing "
        "unless --output is given",
    )
    options = parser.parse_args(argv)
    if options.quick:
        for name, value in QUICK.items():
            if getattr(options, name) == parser.get_default(name):
                setattr(options, name, value)
        if options.output == parser.get_default("output"):
            options.output = "-"
    options.clients = [int(number) for number in options.clients.split(",")]
    return options


def shown_command(argv: list[str]) -> str:
    """How this run was started, without where it wrote its results."""
    shown = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--output":
            skip = True
        elif not argument.startswith("--output="):
            shown.append(argument)
    return shlex.join(["python", "-m", "bench", *shown])


def findings(real_pi: dict, relayed: dict, resumed: dict) -> list[str]:
    lines = []
    fast, paced = real_pi["times"]["fast"], real_pi["times"]["paced"]

    def typical(runs, position):
        values = [run[position] for run in runs if run[position] is not None]
        return median(values) if values else None

    base = typical(fast["direct"], 0)
    added = {mode: typical(fast[mode], 0) / base - 1 for mode in ("full", "delta")}
    if max(added.values()) > document.RELAY_GOAL:
        cpu = {name: typical(fast[name], 1) for name in ("direct", "full", "delta")}
        spent = ""
        if None not in cpu.values():
            spent = (
                f" pi-server spends {report.duration(cpu['full'])} of CPU on one answer "
                f"for a full-mode client and {report.duration(cpu['delta'])} for a "
                f"delta-mode one (decoding, journaling, framing), against "
                f"{report.duration(cpu['direct'])} for pi itself to write it, and they "
                "share the cores with the client."
            )
        paced_base = typical(paced["direct"], 0)
        lines.append(
            f"Streamed without delay, pi alone answers 2,000 tokens "
            f"({report.size(real_pi['pi_bytes'][0])} of events) in "
            f"{report.duration(base)}, and the relay's throughput, not its latency, sets the "
            f"end: {report.percent(added['full'])} (full mode), "
            f"{report.percent(added['delta'])} (delta mode).{spent} Paced at "
            f"{real_pi['paced_rate']:.0f} tokens a second the relay adds "
            f"{report.percent(typical(paced['full'], 0) / paced_base - 1)} "
            f"(full) and {report.percent(typical(paced['delta'], 0) / paced_base - 1)} (delta). "
            "Without delay the figure moves from run to run with how three busy processes "
            "share the cores: every run is listed under its table."
        )
    times = relayed["times"]
    counts = sorted({clients for _, clients in times})
    if len(counts) > 1:
        fewest, most = counts[0], counts[-1]
        each = {
            mode: (times[mode, most] - times[mode, fewest]) / (most - fewest) / relayed["events"]
            for mode in ("full", "delta")
        }
        lines.append(
            f"Fan-out: from {fewest} to {most} attached clients, each more client costs the "
            f"relay {report.duration(each['full'])} per event in full mode and "
            f"{report.duration(each['delta'])} in delta mode (a WebSocket frame written for "
            "each client)."
        )
    for result in resumed["socket"].values():
        mode, count = result["mode"], result["events"]
        if result.get("caught_up") == "snapshot":
            lines.append(
                f"A {mode}-mode resume of {count:,} events of long answers gets a "
                "`session_snapshot` instead of the replay (the server replays at most "
                f"{MAX_FULL_REPLAY_EVENTS:,} events or "
                f"{DEFAULT_MAX_REPLAY_BYTES // (1 << 20)} MiB in full mode): what the client "
                f"needs to redraw, in {report.duration(result['time'])}."
            )
        elif result.get("caught_up") == "replayed":
            lines.append(
                f"A {mode}-mode resume replaying {count:,} events of long answers takes "
                f"{report.duration(result['time'])} to the `hello` response: "
                f"{report.count(result['frames'])} frames, {report.size(result['bytes'])}."
            )
        if "closed" in result:
            lines.append(
                f"A {mode}-mode resume of {count:,} events of long answers is cut "
                f"off with close code {result['closed']} under the default "
                f"`--send-buffer-limit` ({DEFAULT_SEND_BUFFER_LIMIT // (1 << 20)} MiB): the replay "
                "is sent in one go, so more than the limit waits in the send buffer."
            )
    return lines


async def run(reactor, options: argparse.Namespace) -> None:
    pi = locate_pi()
    machine = Machine.describe(pi)
    started = time.perf_counter()
    print(
        f"pi-server benchmarks: {machine.cores} cores, {machine.python}, pi {machine.pi_version}\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="pi-server-bench-") as directory:
        work = Path(directory)
        (work / "home").mkdir()
        environ = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(work / "home")}
        tables = []

        def show(table):
            tables.append(table)
            print(table.text() + "\n", flush=True)

        real_tables, real_pi, answer = await realpi.measure(
            reactor,
            work / "real-pi",
            pi,
            environ,
            options.rounds,
            options.warmup,
            options.paced_delay,
            options.paced_rounds,
            options.short_rounds,
        )
        for table in real_tables:
            show(table)
        (work / "start").mkdir()
        started_runs = await lifecycle.measure(
            reactor, work / "start", pi, options.start_rounds, 2, environ
        )
        show(lifecycle.table(started_runs, machine, options.start_rounds))
        warm_created = await warmcreate.measure(
            reactor, work / "warm-create", pi, options.warm_create_rounds, environ
        )
        show(warmcreate.table(warm_created, machine, options.warm_create_rounds))
        idle_table, idled = await idle.measure(
            reactor, work / "idle", pi, environ, options.idle_sessions, options.idle_resumed
        )
        show(idle_table)
        relay_table, relayed = await relay.measure(
            reactor, work / "relay", environ, options.relay_events, options.clients, options.repeats
        )
        show(relay_table)
        resume_table, resumed = await resume.measure(
            reactor, work / "resume", pi, answer, options.resume_events, options.repeats, environ
        )
        show(resume_table)
    mode_lines = document.event_modes(real_pi)
    goal_lines = document.goals(real_pi)
    hot_path_lines = document.start_goals(started_runs) + document.hot_path_goals(real_pi, idled)
    warm_lines = warmcreate.goal_lines(warm_created)
    found = findings(real_pi, relayed, resumed)
    print("\n".join(mode_lines + goal_lines + hot_path_lines + warm_lines + found))
    took = time.perf_counter() - started
    print(f"\n{took:.0f} s in all")
    if options.output != "-":
        Path(options.output).write_text(
            document.markdown(
                machine,
                shown_command(sys.argv[1:]),
                took,
                Machine.load_average(),
                tables,
                goal_lines,
                mode_lines,
                found,
                hot_path_lines,
                warm_lines,
            ),
            encoding="utf-8",
        )
        print(f"written to {options.output}")


def main(argv: list[str]) -> None:
    options = arguments(argv)
    try:
        locate_pi()
    except PiNotInstalled as missing:
        sys.exit(str(missing))

    def start(reactor):
        return defer.ensureDeferred(run(reactor, options))

    task.react(start)


main(sys.argv[1:])
