"""
Resume cost: 10,000 journaled events of real pi answers, replayed.

The events are pi's own lines for a 2,000-token answer (read in the wire
benchmark), over and over: pi 1.6 sends one delta-only ``message_update`` per
token, each with the usage so far. In process, a journal with the server's
default limits takes them with ``Journal.append`` (the baseline) and gives
them back with ``Journal.replay`` in delta and full mode; reading the same
events as pi wrote them from a file is the other reference. Over a socket, a
client resumes from before the first of them (``hello.resume``) and is timed
until the response, which comes after the replayed events; a full-mode client
also resumes from before the last events the server replays in full mode.
"""

import json
import sys
import time
from pathlib import Path

from piserver.sessions.journal import Journal
from piserver.sessions.stream import DEFAULT_MAX_REPLAY_BYTES, MAX_FULL_REPLAY_EVENTS
from piserver.tap import Options
from tests.support.piagent import pi_option

from . import report
from .report import Table
from .rig import TOKEN, ServerProcess, median, stub_command
from .wsclient import CallFailed, connect


def server_limits(work: Path, pi: tuple[str, ...]):
    """The journal limits pi-server runs with by default."""
    options = Options(environ={})
    options.parseOptions(
        ["--data-dir", str(work / "limits"), "--pi", pi_option(pi), "--auth-token", TOKEN]
    )
    return options.config.journal_limits


def cycled(lines: list[bytes], count: int) -> list[bytes]:
    rounds, rest = divmod(count, len(lines))
    return lines * rounds + lines[:rest]


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def append_all(journal: Journal, events) -> None:
    for seq, event_type, payload, line in events:
        journal.append(seq, event_type, payload, line)


def read_all(paths) -> None:
    for path in paths:
        path.read_bytes()


def split_lines(path: Path) -> None:
    path.read_bytes().split(b"\n")


def journal_runs(reactor, work: Path, lines: list[bytes], limits, repeats: int) -> dict:
    times = {"append": [], "delta": [], "full": [], "raw": [], "segments": []}
    raw = work / "events.jsonl"
    raw.write_bytes(b"".join(line + b"\n" for line in lines))
    for number in range(repeats):
        # Fresh dicts per event, as the server decodes each line it reads.
        events = [
            (seq, payload["type"], payload, line)
            for seq, (payload, line) in enumerate(((json.loads(line), line) for line in lines), 1)
        ]
        journal = Journal(work / f"journal-{number}", reactor, limits)
        journal.open()
        times["append"].append(timed(append_all, journal, events))
        del events
        for mode in ("delta", "full"):
            started = time.perf_counter()
            replayed = journal.replay(0, mode)
            times[mode].append(time.perf_counter() - started)
            if len(replayed) != len(lines):
                raise RuntimeError(f"{mode} replay gave {len(replayed)} events")
            del replayed
        times["segments"].append(timed(read_all, sorted(journal.directory.iterdir())))
        times["raw"].append(timed(split_lines, raw))
        disk = journal.disk_bytes
        journal.close()
    return {"times": times, "disk": disk, "raw": raw.stat().st_size}


async def resume_once(reactor, port: int, mode: str, session_id: str, after: int) -> dict:
    """One client resuming ``session_id`` after seq ``after``: time to the response, or
    the close code when the server cut it off."""
    client = await connect(reactor, port, TOKEN, None)
    started = time.perf_counter()
    try:
        hello = await client.hello(
            mode, {"connectionId": "gone", "lastSeqBySession": {session_id: after}}
        )
    except CallFailed:
        await client.lost
        return {
            "closed": client.close_code,
            "frames": client.event_frames,
            "bytes": client.event_bytes,
        }
    took = time.perf_counter() - started
    await client.close()
    caught_up = hello["resumed"].get(session_id)
    if caught_up not in ("replayed", "snapshot"):
        raise RuntimeError(f"{mode} resume did not catch up: {hello['resumed']}")
    result = {
        "time": took,
        "frames": client.event_frames,
        "bytes": client.event_bytes,
        "caught_up": caught_up,
    }
    if caught_up == "replayed":
        result["last_seq"] = client.last_seq
    return result


async def socket_runs(
    reactor, work: Path, stream: Path, events: int, environ: dict, repeats: int
) -> dict:
    """Journal ``events`` events through pi-server, then time resumes: in both modes from
    before all of them, and in full mode also from before the last
    ``MAX_FULL_REPLAY_EVENTS`` (the most the server replays in full mode) when there are
    more. Keyed by label, each with its ``mode`` and the ``events`` it resumes over."""
    data_dir = work / "resume-data"
    server = await ServerProcess.start(reactor, data_dir, stub_command(stream), environ)
    resumes = [("delta", "delta", events), ("full", "full", events)]
    if events > MAX_FULL_REPLAY_EVENTS:
        resumes.append((f"full, last {MAX_FULL_REPLAY_EVENTS:,}", "full", MAX_FULL_REPLAY_EVENTS))
    results = {}
    try:
        writer = await connect(reactor, server.port, TOKEN, "delta")
        session_id = (await writer.call("session.create", {"mode": "chat"}))["sessionId"]
        first = (await writer.call("session.attach", {"sessionId": session_id}))["lastSeq"]
        last = first + events
        done = writer.until_seq(last)
        await writer.call("prompt", {"message": f"replay {events}"}, session_id=session_id)
        await done
        await writer.close()
        for label, mode, count in resumes:
            runs = [
                await resume_once(reactor, server.port, mode, session_id, last - count)
                for _ in range(repeats)
            ]
            results[label] = {**runs[-1], "mode": mode, "events": count}
            if "time" in runs[-1]:
                results[label]["time"] = median(run["time"] for run in runs)
    except Exception:
        sys.stderr.write(server.stderr.decode(errors="replace")[-5000:])
        raise
    finally:
        await server.stop()
    for result in results.values():
        if "last_seq" in result and result["last_seq"] != last:
            raise RuntimeError(f"a resume ended at seq {result['last_seq']}, not {last}")
    return results


def snapshot_reason(events: int, full_bytes: float) -> str:
    """Why the server answers a full-mode resume over ``events`` events of ``full_bytes``
    with a snapshot (the limits of ``piserver.stream``)."""
    if events > MAX_FULL_REPLAY_EVENTS:
        return f"more than the {MAX_FULL_REPLAY_EVENTS:,} events the server replays in full mode"
    return (
        f"{report.size(full_bytes)} of pi's events, more than the "
        f"{DEFAULT_MAX_REPLAY_BYTES // (1 << 20)} MiB the server replays in full mode"
    )


async def measure(
    reactor,
    work: Path,
    pi: tuple[str, ...],
    answer: list[bytes],
    events: int,
    repeats: int,
    environ: dict,
) -> tuple[Table, dict]:
    work.mkdir(parents=True)
    lines = cycled(answer, events)
    journal = journal_runs(reactor, work, lines, server_limits(work, pi), repeats)
    stream = work / "answer.jsonl"
    stream.write_bytes(b"".join(line + b"\n" for line in answer))
    over_socket = await socket_runs(reactor, work, stream, events, environ, repeats)
    times = {name: median(values) for name, values in journal["times"].items()}
    append, raw = times["append"], times["raw"]

    def row(label, took, output=""):
        return (
            label,
            output,
            report.duration(took),
            report.ratio(took / append),
            report.ratio(took / raw),
        )

    rows = [
        row("Journal.append of every event (baseline)", append, report.size(journal["disk"])),
        row("reading pi's lines from a file, split", raw, report.size(journal["raw"])),
        row("reading the journal's segment files", times["segments"], report.size(journal["disk"])),
        row("Journal.replay, delta mode", times["delta"]),
        row("Journal.replay, full mode", times["full"]),
    ]
    notes = []
    for label, result in over_socket.items():
        mode, count = result["mode"], result["events"]
        shown = (
            f"resume over a socket, {label} mode"
            if label == mode
            else f"resume over a socket, {mode} mode, the last {count:,} events"
        )
        if result.get("caught_up") == "snapshot":
            shown += " (a session_snapshot instead of the replay)"
            full_bytes = sum(len(line) + 1 for line in lines[len(lines) - count :])
            notes.append(
                f"A {mode}-mode resume of {count:,} of these events gets one "
                "`session_snapshot` instead of the replay: the catch-up would be "
                f"{snapshot_reason(count, full_bytes)}."
            )
        received = f"{report.count(result['frames'])} frames, {report.size(result['bytes'])}"
        if "time" in result:
            rows.append(row(shown, result["time"], received))
        else:
            rows.append((shown, received, f"cut off ({result['closed']})", "", ""))
            notes.append(
                f"With the default `--send-buffer-limit` a {mode}-mode resume of {count:,} of "
                f"these events fails: the server closes the connection with code "
                f"{result['closed']} after {received}, because the replay is written in one "
                "go and more than the limit waits in the send buffer."
            )
    table = Table(
        title=f"Resume cost: {events:,} journaled events of real pi answers",
        columns=("Operation", "Bytes", "Time (median)", "vs append", "vs reading pi's lines"),
        rows=tuple(rows),
        notes=(
            f"{events:,} events: pi's {len(answer):,} events of one 2,000-token answer, "
            f"repeated ({report.size(journal['raw'])} as pi wrote them, "
            f"{report.size(journal['disk'])} in the journal, "
            f"{report.ratio(journal['raw'] / journal['disk'])} fewer bytes). Journal limits "
            f"as the server's defaults. Median of {repeats} runs. The socket resume is timed "
            "from `hello` with `resume` sent to its response (after the replayed events), by "
            "a client that splits frames without decoding them.",
            *notes,
        ),
    )
    return table, {"times": times, "journal": journal, "socket": over_socket}
