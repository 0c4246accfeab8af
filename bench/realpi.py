"""
The real pi agent answering 2,000 tokens from the scripted LLM: what it costs
on the wire in each event mode, and how much time pi-server adds end to end.

Bytes: pi's stdout is read directly once (the baseline); then one pi-server
session answers while four WebSocket clients are attached to it, in full
mode, delta mode, delta mode with permessage-deflate and full mode with
permessage-deflate. Payload bytes are the WebSocket messages' (uncompressed)
sizes, socket bytes what the client read from TCP. Once with the answer
streamed without delay (nearly all text deltas merge), once paced.

Time: from the prompt written to ``agent_settled`` read (pi 1.x's end of a
run), pi alone through a
direct JSON-lines reader against pi behind pi-server with one WebSocket
client, both decoding every event; the routes take turns, after warm-up
rounds (pi gets much faster over its first answers). Once streamed without
delay, where the relay's throughput shows, once paced; then a short answer,
where its latency does.
"""

import gc
import json
import os
import time
from pathlib import Path

from twisted.internet import defer

from tests.support.fakellm import Tokens
from tests.support.piagent import write_agent_dir
from tests.support.wsclient import RpcClient

from . import report
from .report import Table
from .rig import (
    TOKEN,
    LlmProcess,
    ServerProcess,
    chat_agent_args,
    median,
    percentile,
    spawn_reader,
)
from .wsclient import connect

TOKENS = 2000
# A short prompt's answer: its round trip is the relay's latency, not its throughput.
SHORT_TOKENS = 5
HELLO = {"client": {"name": "bench", "version": "1"}}
WIRE_CLIENTS = (
    ("full", "full", False),
    ("delta", "delta", False),
    ("delta + deflate", "delta", True),
    ("full + deflate", "full", True),
)


class Setup:
    """The scripted LLM (in a process of its own) and the hermetic pi agent dir shared
    by these benchmarks."""

    def __init__(self, reactor, work: Path, pi: tuple[str, ...], environ: dict):
        self.reactor = reactor
        self.work = work
        self.pi = pi
        self.environ = environ
        self.llm = None
        self.agent_dir = None

    async def start(self):
        self.llm = await LlmProcess.start(self.reactor, self.environ)
        self.agent_dir = write_agent_dir(self.work / "pi", self.llm.base_url)
        return self

    def spawn_pi(self, name: str, **options):
        session_dir = self.work / name
        session_dir.mkdir(mode=0o700)
        return spawn_reader(
            self.reactor,
            time.perf_counter,
            [*self.pi, *chat_agent_args(session_dir)],
            self.agent_dir.environment(),
            self.agent_dir.project,
            **options,
        )

    def start_server(self, extra_args=(), profile: str | None = None):
        return ServerProcess.start(
            self.reactor,
            self.agent_dir.path,
            self.pi,
            self.agent_dir.environment(),
            extra_args,
            profile,
        )

    async def stop(self):
        if self.llm is not None:
            await self.llm.stop()


# -- bytes on the wire ---------------------------------------------------------


async def pi_stdout(setup: Setup, answers) -> list[list[bytes]]:
    """pi's event lines (responses left out) for each answer, read directly."""
    pi = setup.spawn_pi("capture", capture=True)
    pi.send({"id": "state", "type": "get_state"})
    await pi.until_event("response", 1)
    streams = []
    for number, answer in enumerate(answers, 1):
        await setup.llm.script(answer)
        start = len(pi.captured)
        pi.send({"id": f"p{number}", "type": "prompt", "message": "write a lot"})
        await pi.until_event("agent_settled", number)
        streams.append(
            [line for line in pi.captured[start:] if json.loads(line)["type"] != "response"]
        )
    await pi.stop()
    return streams


UPDATE = b'{"type":"message_update"'


def updates_of(lines: list[bytes]) -> list[bytes]:
    """pi's ``message_update`` lines (the others are the messages at their start and end,
    the turn and the run)."""
    return [line for line in lines if line.startswith(UPDATE)]


def usage_bytes(updates: list[bytes]) -> int:
    """Bytes of the ``usage`` objects pi 1.x repeats on every ``message_update`` (what delta
    mode drops from each), as pi wrote them."""
    total = 0
    for line in updates:
        usage = json.loads(line).get("usage")
        if usage is not None:
            total += len(',"usage":') + len(json.dumps(usage, separators=(",", ":")))
    return total


def text_of(frames) -> str:
    return "".join(
        frame["payload"]["assistantMessageEvent"]["delta"]
        for frame in frames
        if frame["type"] == "message_update"
        and frame["payload"]["assistantMessageEvent"]["type"] == "text_delta"
    )


async def wire_bytes(setup: Setup, port: int, answers) -> list[dict]:
    """Per answer and client: event frames, payload bytes and socket bytes."""
    reactor = setup.reactor
    control = await RpcClient.connect(reactor, port, token=TOKEN)
    await control.call("hello", HELLO)
    session_id = (await control.call("session.create", {"mode": "chat"}))["sessionId"]
    await control.call("session.detach")
    clients = {}
    for name, mode, deflate in WIRE_CLIENTS:
        client = await RpcClient.connect(reactor, port, token=TOKEN, deflate=deflate)
        await client.call("hello", {**HELLO, "eventMode": mode})
        await client.call("session.attach", {"sessionId": session_id, "exclusive": False})
        clients[name] = client
    results = []
    for answer in answers:
        before = {
            name: (len(c.frames), c.payload_bytes, c.wire_bytes) for name, c in clients.items()
        }
        # Each answer's frames are dropped once counted: any agent_settled seen is this one's.
        ends = [
            c.wait_for_event(lambda frame: frame["type"] == "agent_settled")
            for c in clients.values()
        ]
        await setup.llm.script(answer)
        await control.call("prompt", {"message": "write a lot"}, session_id=session_id)
        await defer.gatherResults(ends)
        figures = {}
        for name, client in clients.items():
            frames, payload, wire = before[name]
            events = [f for f in client.frames[frames:] if f.get("kind") == "event"]
            if text_of(events) != answer.text:
                raise RuntimeError(f"{name} client did not get the whole answer")
            figures[name] = {
                "frames": len(events),
                "payload": client.payload_bytes - payload,
                "socket": client.wire_bytes - wire,
            }
            # Nothing from this answer is needed any more: keep the process small.
            del client.frames[frames:]
            client.events = defer.DeferredQueue()
        results.append(figures)
    for client in (control, *clients.values()):
        await client.disconnect()
    return results


def wire_table(title: str, pi_lines: list[bytes], figures: dict, note: str) -> Table:
    pi_bytes = sum(len(line) + 1 for line in pi_lines)
    full = figures["full"]["payload"]
    rows = [
        (
            "pi stdout, read directly (baseline)",
            report.count(len(pi_lines)),
            report.size(pi_bytes),
            "",
            "1.00x",
            report.ratio(pi_bytes / full),
        )
    ]
    for name, _, deflate in WIRE_CLIENTS:
        client = figures[name]
        shown = client["socket"] if deflate else client["payload"]
        rows.append(
            (
                f"pi-server, {name}",
                report.count(client["frames"]),
                report.size(client["payload"]),
                report.size(client["socket"]),
                report.ratio(pi_bytes / shown),
                report.ratio(full / shown),
            )
        )
    return Table(
        title=title,
        columns=(
            "Stream",
            "Events / frames",
            "Payload bytes",
            "Socket bytes",
            "x fewer than pi stdout",
            "x fewer than full mode",
        ),
        rows=tuple(rows),
        notes=(note, "Ratios use payload bytes, or socket bytes with deflate."),
    )


# -- time end to end -----------------------------------------------------------


ROUTES = (
    ("direct", "pi alone, direct JSON-lines reader (baseline)"),
    ("split", "pi alone, direct reader splitting lines only"),
    ("full", "via pi-server, one full-mode WebSocket client"),
    ("delta", "via pi-server, one delta-mode WebSocket client"),
)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Routes:
    """The same answer, prompt to agent_settled: pi read directly (decoding every line, or
    only splitting them) and pi behind pi-server with a full- or delta-mode client that
    decodes every event. Each route has its own pi process and keeps it, warm. Without
    ``direct`` only the relayed routes are there (``bench/hotpath.py`` profiles them)."""

    def __init__(self, setup: Setup, server: ServerProcess, direct: bool = True):
        self.setup = setup
        self.server = server
        self.direct = direct
        self.readers = {}
        self.clients = {}
        self.answers = {}

    async def start(self):
        reactor = self.setup.reactor
        gc.collect()  # what the byte benchmarks decoded must not be collected during a run
        if self.direct:
            self.readers = {
                "direct": self.setup.spawn_pi("direct"),
                "split": self.setup.spawn_pi("split", parse=False),
            }
        for reader in self.readers.values():
            reader.send({"id": "state", "type": "get_state"})
            await reader.until_lines(1)
        self.answers = dict.fromkeys(self.readers, 0)
        for mode in ("full", "delta"):
            client = await connect(reactor, self.server.port, TOKEN, mode, decode=True)
            session_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
            self.clients[mode] = (client, session_id)
        return self

    async def _direct(self, name: str, answer) -> tuple[float, float | None]:
        reader = self.readers[name]
        self.answers[name] += 1
        await self.setup.llm.script(answer)
        cpu = cpu_seconds(reader.transport.pid)
        started = time.perf_counter()
        reader.send({"id": f"p{self.answers[name]}", "type": "prompt", "message": "write a lot"})
        took = await reader.until_event("agent_settled", self.answers[name]) - started
        return took, _used(cpu, cpu_seconds(reader.transport.pid))

    async def _relayed(self, mode: str, answer) -> tuple[float, float | None]:
        client, session_id = self.clients[mode]
        await self.setup.llm.script(answer)
        ended = client.until_type("agent_settled")
        cpu = cpu_seconds(self.server.pid)
        started = time.perf_counter()
        await client.call("prompt", {"message": "write a lot"}, session_id=session_id)
        took = await ended - started
        return took, _used(cpu, cpu_seconds(self.server.pid))

    async def rounds(self, answer, rounds: int, warmup: int, routes=None) -> dict:
        """Per route (all by default), (seconds, CPU seconds of pi or of pi-server) for
        each measured round; the routes take turns."""
        runs = {name: [] for name, _ in ROUTES if routes is None or name in routes}
        for number in range(warmup + rounds):
            for name in runs:
                if name in self.readers:
                    result = await self._direct(name, answer)
                else:
                    result = await self._relayed(name, answer)
                if number >= warmup:
                    runs[name].append(result)
        return runs

    async def stop(self):
        for reader in self.readers.values():
            await reader.stop()
        for client, session_id in self.clients.values():
            await client.call("session.delete", {"sessionId": session_id})
            await client.close()


def _used(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def time_table(title: str, runs: dict, note: str) -> Table:
    base = median(took for took, _ in runs["direct"])
    rows = []
    for name, label in ROUTES:
        if name not in runs:
            continue
        took = median(t for t, _ in runs[name])
        cpus = [cpu for _, cpu in runs[name] if cpu is not None]
        rows.append(
            (
                label,
                report.duration(took),
                report.ratio(took / base),
                report.percent(took / base - 1) if name != "direct" else "",
                report.duration(median(cpus)) if cpus else "n/a",
            )
        )
    spread = "; ".join(
        f"{name}: " + " ".join(f"{took * 1e3:.0f}" for took, _ in values)
        for name, values in runs.items()
    )
    return Table(
        title=title,
        columns=(
            "Route",
            "Prompt to agent_settled (median)",
            "vs baseline",
            "Difference",
            "CPU of pi / of pi-server",
        ),
        rows=tuple(rows),
        notes=(
            note,
            f"Every run, in ms: {spread}.",
            "CPU: what pi's process used per answer on the direct routes, what the "
            "pi-server process used per answer on the relayed ones (its pi not counted).",
        ),
    )


SHORT_ROUTES = ("direct", "full", "delta")


def short_table(runs: dict, warmup: int) -> Table:
    base = median(took for took, _ in runs["direct"])
    rows = []
    for name, label in ROUTES:
        if name not in runs:
            continue
        times = [took for took, _ in runs[name]]
        rows.append(
            (
                label,
                report.duration(median(times)),
                report.duration(percentile(times, 0.9)),
                f"{(median(times) - base) * 1e3:+.2f} ms" if name != "direct" else "",
            )
        )
    spread = "; ".join(
        f"{name}: " + " ".join(f"{took * 1e3:.1f}" for took, _ in values)
        for name, values in runs.items()
    )
    count = len(runs["direct"])
    return Table(
        title=f"Short prompt round trip: a real {SHORT_TOKENS}-token answer",
        columns=("Route", "Prompt to agent_settled (p50)", "p90", "Difference (p50)"),
        rows=tuple(rows),
        notes=(
            f"`Tokens({SHORT_TOKENS})`: the relay's latency, not its throughput. p50 of "
            f"{count} rounds, the routes taking turns, after {warmup} warm-up rounds, on "
            "the same warm pi processes as the tables above.",
            f"Every run, in ms: {spread}.",
        ),
    )


async def measure(
    reactor,
    work: Path,
    pi: tuple[str, ...],
    environ: dict,
    rounds: int,
    warmup: int,
    paced_delay: float,
    paced_rounds: int,
    short_rounds: int,
):
    """Returns (tables, figures, pi's event lines of one unpaced answer)."""
    setup = await Setup(reactor, work, pi, environ).start()
    answers = (Tokens(TOKENS), Tokens(TOKENS, delay=paced_delay))
    try:
        streams = await pi_stdout(setup, answers)
        server = await setup.start_server()
        try:
            wire = await wire_bytes(setup, server.port, answers)
            routes = await Routes(setup, server).start()
            fast = await routes.rounds(answers[0], rounds, warmup)
            # Reading without decoding makes no difference at this pace: not run again.
            paced = await routes.rounds(answers[1], paced_rounds, 0, ("direct", "full", "delta"))
            short_warmup = min(warmup, 3)
            short = await routes.rounds(
                Tokens(SHORT_TOKENS), short_rounds, short_warmup, SHORT_ROUTES
            )
            await routes.stop()
        finally:
            await server.stop()
    finally:
        await setup.stop()
    figures = {
        "wire": wire,
        "pi_bytes": [sum(len(x) + 1 for x in s) for s in streams],
        "pi_events": [len(s) for s in streams],
        "updates": [len(updates_of(s)) for s in streams],
        "update_bytes": [sum(len(x) + 1 for x in updates_of(s)) for s in streams],
        "usage_bytes": [usage_bytes(updates_of(s)) for s in streams],
        "times": {"fast": fast, "paced": paced},
        "short": short,
        "paced_rate": 1 / paced_delay,
    }
    tables = [
        wire_table(
            f"Bytes on the wire: a {TOKENS:,}-token answer streamed without delay",
            streams[0],
            wire[0],
            f"`Tokens({TOKENS})`: the scripted LLM sends its {TOKENS:,} one-token chunks at once.",
        ),
        wire_table(
            f"Bytes on the wire: a {TOKENS:,}-token answer, paced",
            streams[1],
            wire[1],
            f"`Tokens({TOKENS}, delay={paced_delay})`: one token every "
            f"{paced_delay * 1e3:g} ms, so delta mode's 30 ms window merges a few at a "
            "time.",
        ),
        time_table(
            f"Relay time end to end: a real {TOKENS:,}-token answer streamed without delay",
            fast,
            f"`Tokens({TOKENS})`: pi writes its {report.size(figures['pi_bytes'][0])} of "
            "events as fast as it can. Median "
            f"of {rounds} rounds, the routes taking turns, after {warmup} warm-up "
            "rounds.",
        ),
        time_table(
            f"Relay time end to end: a real {TOKENS:,}-token answer, paced",
            paced,
            f"`Tokens({TOKENS}, delay={paced_delay})`: {1 / paced_delay:.0f} tokens a "
            f"second. Median of {paced_rounds} rounds, the routes taking turns.",
        ),
        short_table(short, short_warmup),
    ]
    return tables, figures, streams[0]
