"""
Relay cost: the stub agent writes N events of a recorded real pi stream as
fast as it can; they are read from its stdout directly (the baseline), and
relayed by pi-server to 1, 10 and 100 WebSocket clients.

A run is timed from the prompt written (to the stub, or sent by a client) to
the moment the last reader has the N-th event. The direct reader splits lines
and the WebSocket clients split frames: neither decodes JSON, so the relay is
charged with all of its own work (pi-server decodes every line, journals it
and frames it for each client). A second baseline also decodes each line.
"""

import time
from pathlib import Path

from twisted.internet import defer

from tests.support.events import DIRECTORY as RECORDED_EVENTS

from . import report
from .report import Table
from .rig import TOKEN, ServerProcess, chat_agent_args, median, spawn_reader, stub_command
from .wsclient import connect

STREAM = RECORDED_EVENTS / "text_and_tools.jsonl"


async def direct_runs(
    reactor,
    stub: tuple[str, ...],
    work: Path,
    environ: dict,
    events: int,
    repeats: int,
    parse: bool,
) -> list[float]:
    """Time ``repeats`` runs of the stub's N events read straight off its stdout."""
    session_dir = work / f"direct-{'parse' if parse else 'split'}"
    session_dir.mkdir()
    reader = spawn_reader(
        reactor,
        time.perf_counter,
        [*stub, *chat_agent_args(session_dir)],
        environ,
        work,
        parse=parse,
    )
    reader.send({"id": "1", "type": "get_state"})
    await reader.until_lines(1)
    times = []
    for _ in range(repeats):
        # The prompt's response, then the events.
        done = reader.lines + 1 + events
        started = time.perf_counter()
        reader.send({"id": "2", "type": "prompt", "message": f"replay {events}"})
        times.append(await reader.until_lines(done) - started)
    await reader.stop()
    return times


async def relay_runs(
    reactor, port: int, mode: str, clients: int, events: int, repeats: int
) -> tuple[list[float], int, int]:
    """Time ``repeats`` runs relayed to ``clients`` clients in ``mode``; also return the
    frames and payload bytes one client got in the last run."""
    connected = [await connect(reactor, port, TOKEN, mode) for _ in range(clients)]
    prompter = connected[0]
    session_id = (await prompter.call("session.create", {"mode": "chat"}))["sessionId"]
    for client in connected[1:]:
        await client.call("session.attach", {"sessionId": session_id, "exclusive": False})
    last = (await prompter.call("session.attach", {"sessionId": session_id}))["lastSeq"]
    times = []
    for _ in range(repeats):
        target = last + events
        frames, payload = prompter.event_frames, prompter.event_bytes
        arrivals = defer.gatherResults([client.until_seq(target) for client in connected])
        started = time.perf_counter()
        await prompter.call("prompt", {"message": f"replay {events}"}, session_id=session_id)
        times.append(max(await arrivals) - started)
        last = target
    frames = prompter.event_frames - frames
    payload = prompter.event_bytes - payload
    await prompter.call("session.delete", {"sessionId": session_id})
    for client in connected:
        await client.close()
    return times, frames, payload


async def measure(
    reactor, work: Path, environ: dict, events: int, client_counts, repeats: int
) -> tuple[Table, dict]:
    work.mkdir(parents=True)
    stub = stub_command(STREAM)
    recorded = STREAM.read_bytes().splitlines()
    split = median(await direct_runs(reactor, stub, work, environ, events, repeats, False))
    parsed = median(await direct_runs(reactor, stub, work, environ, events, repeats, True))
    server = await ServerProcess.start(
        reactor,
        work / "relay-data",
        stub,
        environ,
        ["--max-connections", str(max(client_counts) + 10)],
    )
    rows = [
        (
            "stdout read directly, lines split (baseline)",
            "1",
            "",
            report.duration(split),
            report.duration(split / events),
            "1.00x",
        ),
        (
            "stdout read directly, lines split and decoded",
            "1",
            "",
            report.duration(parsed),
            report.duration(parsed / events),
            report.ratio(parsed / split),
        ),
    ]
    figures = {
        "baseline": split,
        "events": events,
        "times": {},
        "stream_bytes": sum(len(line) + 1 for line in recorded),
    }
    try:
        for mode in ("full", "delta"):
            for clients in client_counts:
                times, frames, payload = await relay_runs(
                    reactor, server.port, mode, clients, events, repeats
                )
                took = median(times)
                figures["times"][mode, clients] = took
                rows.append(
                    (
                        f"pi-server, {mode} mode",
                        str(clients),
                        f"{report.count(frames)} / {report.size(payload)}",
                        report.duration(took),
                        report.duration(took / events),
                        report.ratio(took / split),
                    )
                )
    finally:
        await server.stop()
    table = Table(
        title=f"Relay cost: {events:,} events of a recorded pi stream, as fast as the stub "
        "writes them",
        columns=(
            "Reader",
            "Clients",
            "Frames / bytes per client",
            "Time (median)",
            "Per event",
            "vs baseline",
        ),
        rows=tuple(rows),
        notes=(
            f"The stub agent (`bench/stubpi.py`) replays `{STREAM.name}`, real pi's "
            f"recorded events of a short answer with two tool calls ({len(recorded)} events, "
            f"{report.size(figures['stream_bytes'])}), over and over, in one write. Median of "
            f"{repeats} runs. Per event: time / {events:,} events.",
        ),
    )
    return table, figures
