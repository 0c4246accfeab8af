"""
What every benchmark stands on: pi-server and the scripted LLM in child
processes, a direct JSON-lines reader of an agent's stdout, the stub agent's
command, the machine.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import attr
from twisted.internet import defer, error, protocol

from tests.support.piagent import pi_option, repository_root, write_agent_dir

from .wsclient import connect

TOKEN = "bench-token"
STUB = Path(__file__).with_name("stubpi.py")


def median(values) -> float:
    return statistics.median(values)


def percentile(values, fraction: float) -> float:
    """The value ``fraction`` of the way up the sorted values (the nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# -- helper processes ----------------------------------------------------------


class ChildExited(Exception):
    """A helper process ended while it was waited for (its stderr's tail)."""


class Child(protocol.ProcessProtocol):
    """A ``python -m bench.<module>`` child that talks JSON lines on stdin/stdout and
    stops when its stdin closes. ``messages`` holds what it writes, in order."""

    def __init__(self):
        self.messages = defer.DeferredQueue()
        self._ended = defer.Deferred()
        self._buffer = b""
        self.stderr = b""

    @classmethod
    def spawn(cls, reactor, module: str, args=(), environ=None):
        child = cls()
        argv = [sys.executable, "-m", module, *args]
        reactor.spawnProcess(child, sys.executable, argv, env=environ, path=str(repository_root()))
        return child

    async def started(self, what: str) -> dict:
        """The child's first message; fails with its stderr if it exits first."""
        try:
            return await self.messages.get()
        except ChildExited as exited:
            raise RuntimeError(f"{what} did not start: {exited}") from None

    def send(self, message: dict) -> None:
        self.transport.write(json.dumps(message).encode() + b"\n")

    def outReceived(self, data: bytes):
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            self.messages.put(json.loads(line))

    def errReceived(self, data: bytes):
        self.stderr = (self.stderr + data)[-20_000:]

    def processEnded(self, reason):
        exited = ChildExited(self.stderr.decode(errors="replace")[-5000:])
        while self.messages.waiting:
            self.messages.waiting.pop(0).errback(exited)
        self._ended.callback(reason.value)

    def stop(self) -> defer.Deferred:
        if not self._ended.called:
            self.transport.closeStdin()
        return self._ended


class ServerProcess:
    """pi-server in a child process (``bench/serve.py``)."""

    def __init__(self, child: Child, port: int):
        self.child = child
        self.port = port

    @classmethod
    async def start(
        cls,
        reactor,
        data_dir: Path,
        pi: tuple[str, ...],
        environ: dict,
        extra_args=(),
        profile: str | None = None,
    ):
        """``profile``: run it under cProfile, writing its statistics there when it stops."""
        child = Child.spawn(
            reactor,
            "bench.serve",
            [
                *(("--profile", profile) if profile is not None else ()),
                "--port",
                "tcp:0:interface=127.0.0.1",
                "--data-dir",
                str(data_dir),
                "--pi",
                pi_option(pi),
                "--auth-token",
                TOKEN,
                *extra_args,
            ],
            environ,
        )
        return cls(child, (await child.started("pi-server"))["port"])

    @property
    def pid(self) -> int:
        return self.child.transport.pid

    @property
    def stderr(self) -> bytes:
        return self.child.stderr

    def stop(self) -> defer.Deferred:
        return self.child.stop()


class LlmProcess:
    """The scripted LLM in a child process (``bench/llm.py``)."""

    def __init__(self, child: Child, base_url: str):
        self.child = child
        self.base_url = base_url

    @classmethod
    async def start(cls, reactor, environ: dict):
        child = Child.spawn(reactor, "bench.llm", environ=environ)
        return cls(child, (await child.started("the scripted LLM"))["baseUrl"])

    async def script(self, answer) -> None:
        """Queue ``answer`` (a ``Tokens``) for the next request; returns once queued."""
        self.child.send({"tokens": answer.count, "delay": answer.delay})
        await self.child.messages.get()

    def stop(self) -> defer.Deferred:
        return self.child.stop()


# -- reading an agent's stdout directly ----------------------------------------


class LineReader(protocol.ProcessProtocol):
    """
    Reads an agent's stdout as JSON lines, as a client of ``pi --mode rpc``
    would. ``parse``: decode every line; else only split them, and count the
    events of the ``watch`` types by how their line starts (pi writes
    ``{"type":...`` first in an event; pi 1.x ends a run with ``agent_settled``).
    ``capture``: keep every line. Commands go out with ``send``;
    ``until_lines(n)`` and ``until_event(type, n)`` fire with ``clock()`` once
    the n-th line / the n-th event of that type has been read.
    """

    def __init__(self, clock, parse: bool = True, capture: bool = False, watch=("agent_settled",)):
        self._clock = clock
        self.parse = parse
        self.captured: list[bytes] | None = [] if capture else None
        self.lines = 0
        self._buffer = b""
        self._type_counts: dict[str, int] = {}
        self._prefixes = {f'{{"type":"{event_type}"'.encode(): event_type for event_type in watch}
        self._line_waiter: tuple[int, defer.Deferred] | None = None
        self._event_waiter: tuple[str, int, defer.Deferred] | None = None
        self.ended = defer.Deferred()

    def send(self, command: dict) -> None:
        self.transport.write(json.dumps(command).encode() + b"\n")

    def count(self, event_type: str) -> int:
        """How many events of that type have been read."""
        return self._type_counts.get(event_type, 0)

    def until_lines(self, count: int) -> defer.Deferred:
        waiter = defer.Deferred()
        self._line_waiter = (count, waiter)
        self._check_lines()
        return waiter

    def until_event(self, event_type: str, count: int) -> defer.Deferred:
        if not self.parse and event_type not in self._prefixes.values():
            raise ValueError(f"not watching {event_type} events")
        waiter = defer.Deferred()
        self._event_waiter = (event_type, count, waiter)
        self._check_event(event_type)
        return waiter

    def outReceived(self, data: bytes):
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        self.lines += len(lines)
        if self.captured is not None:
            self.captured.extend(lines)
        for line in lines:
            if self.parse:
                event_type = json.loads(line).get("type")
            else:
                event_type = next(
                    (
                        watched
                        for prefix, watched in self._prefixes.items()
                        if line.startswith(prefix)
                    ),
                    None,
                )
                if event_type is None:
                    continue
            self._type_counts[event_type] = self._type_counts.get(event_type, 0) + 1
            if self._event_waiter is not None and event_type == self._event_waiter[0]:
                self._check_event(event_type)
        if self._line_waiter is not None:
            self._check_lines()

    def _check_lines(self) -> None:
        count, waiter = self._line_waiter
        if self.lines >= count:
            self._line_waiter = None
            waiter.callback(self._clock())

    def _check_event(self, event_type: str) -> None:
        wanted, count, waiter = self._event_waiter
        if wanted == event_type and self._type_counts.get(event_type, 0) >= count:
            self._event_waiter = None
            waiter.callback(self._clock())

    def processEnded(self, reason):
        self.ended.callback(reason.value)

    def stop(self) -> defer.Deferred:
        try:
            self.transport.closeStdin()
        except error.ProcessExitedAlready:
            pass
        return self.ended


def spawn_reader(reactor, clock, argv: list[str], environ: dict, cwd: Path, **options):
    """Start ``argv`` (an agent and its arguments) read by a :class:`LineReader`."""
    reader = LineReader(clock, **options)
    reactor.spawnProcess(reader, argv[0], argv, env=environ, path=str(cwd))
    return reader


def chat_agent_args(session_dir: Path) -> list[str]:
    """The arguments pi-server gives the agent of a chat session (sessions.agent_args)."""
    return ["--mode", "rpc", "--session-dir", str(session_dir), "--continue", "--no-builtin-tools"]


def stub_command(stream: Path) -> tuple[str, ...]:
    """The command of the stub agent replaying ``stream`` (an agent command, as
    :func:`tests.support.piagent.locate_pi` gives the real one)."""
    return (sys.executable, str(STUB), "--stream", str(stream))


# -- the machine ---------------------------------------------------------------


@attr.frozen
class Machine:
    cores: int
    cpu: str
    python: str
    system: str
    pi_version: str
    date: str
    load: str

    @classmethod
    def describe(cls, pi: tuple[str, ...]) -> "Machine":
        cpu = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        shown = subprocess.run([*pi, "--version"], capture_output=True, text=True, timeout=60)
        version = shown.stdout.strip().splitlines()[-1:]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return cls(
            cores=cores,
            cpu=cpu,
            python=f"{platform.python_implementation()} {platform.python_version()}",
            system=f"{platform.system()} {platform.release()}",
            pi_version=version[0] if version else "unknown",
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            # Anything else running shares the cores with the benchmarks.
            load=cls.load_average(),
        )

    @staticmethod
    def load_average() -> str:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())


async def servers_taking_turns(
    reactor,
    work: Path,
    pi: tuple[str, ...],
    llm: LlmProcess,
    servers: dict[str, list[str]],
    one_round,
    rounds: int,
    warmup: int,
    event_mode: str = "full",
) -> dict[str, list]:
    """A pi-server per entry of ``servers`` (name: its extra arguments), each over a data
    dir of its own and the scripted ``llm``, with a client each. ``one_round(name, server,
    client)`` runs ``warmup + rounds`` times on each, the servers taking turns; which goes
    first alternates, against drift in the machine's load. Returns the figures of the
    measured rounds, by name."""
    started, clients = {}, {}
    try:
        for name, args in servers.items():
            agent_dir = write_agent_dir(work / name, llm.base_url)
            started[name] = await ServerProcess.start(
                reactor, agent_dir.path, pi, agent_dir.environment(), extra_args=args
            )
            clients[name] = await connect(reactor, started[name].port, TOKEN, event_mode)
        runs = {name: [] for name in servers}
        for number in range(warmup + rounds):
            order = list(servers) if number % 2 == 0 else list(servers)[::-1]
            for name in order:
                figures = await one_round(name, started[name], clients[name])
                if number >= warmup:
                    runs[name].append(figures)
        return runs
    finally:
        for client in clients.values():
            await client.close()
        for server in started.values():
            await server.stop()
