"""Running the real pi agent in tests: finding it, a hermetic agent dir, a JSON-lines client.

The agent dir written here (``models.json`` with a provider ``fake`` whose ``baseUrl`` is a
:class:`~tests.support.fakellm.FakeLLM`, ``settings.json`` making ``fake/fake-1`` the default) is
also what pi-server uses as its data dir. :class:`PiRpc` is a minimal stand-alone client for
``pi --mode rpc``, for tests of pi itself; the server has its own.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import attr
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol

from piserver.config import project_pi

INSTALL_HINT = (
    "run scripts/install-pi from the repository root (it installs the pinned "
    "@earendil-works/pi-coding-agent and a Node.js 22 into node_modules/), or set "
    "PI_SERVER_PI to a pi binary"
)
FAKE_PROVIDER = "fake"
FAKE_MODELS = ("fake-1", "fake-2")
SCRIPTS = Path(__file__).resolve().parent / "bin"
VERSION_ONLY_PI = str(SCRIPTS / "pi-1.6.0")
"""A stand-in for pi that only answers ``--version`` (1.6.0): for tests of option parsing."""
OLD_PI = str(SCRIPTS / "pi-0.73.1")
"""A stand-in answering ``--version`` as the last pi of the old npm scope does."""
DEFAULT_TIMEOUT = 20.0
"""Seconds a wait may take before it fails: a safety net against hangs, not a sleep."""


class PiNotInstalled(Exception):
    """The pi binary is not where the tests look for it."""


def repository_root() -> Path:
    """The directory holding tox.ini, above this file."""
    for directory in Path(__file__).resolve().parents:
        if (directory / "tox.ini").is_file():
            return directory
    raise RuntimeError(f"no tox.ini above {__file__}")


def locate_pi(environ=os.environ) -> tuple[str, ...]:
    """The pi command: ``$PI_SERVER_PI`` (a path), else the pi (and the Node.js) that
    scripts/install-pi put into ``$PI_SERVER_PROJECT_DIR`` or the repository root, found as
    the server finds it. Raises :class:`PiNotInstalled` (saying how to install it) when
    missing."""
    if environ.get("PI_SERVER_PI"):
        candidate = Path(environ["PI_SERVER_PI"])
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            raise PiNotInstalled(f"pi agent not found at {candidate}: {INSTALL_HINT}")
        return (str(candidate),)
    project = Path(environ.get("PI_SERVER_PROJECT_DIR") or repository_root())
    command = project_pi(project)
    if command is None:
        raise PiNotInstalled(f"pi agent not found in {project / 'node_modules'}: {INSTALL_HINT}")
    return command


def pi_option(command: tuple[str, ...]) -> str:
    """``command`` as the value of pi-server's ``--pi``."""
    return shlex.join(command)


@attr.frozen
class AgentDir:
    """A hermetic home for one pi run.

    ``path`` is pi's agent dir (``PI_CODING_AGENT_DIR``; pi-server's data dir), ``home`` the
    ``HOME`` pi sees (it reads ``~/.agents/skills`` and expands ``~`` there), ``project`` an
    empty directory to use as pi's working directory.
    """

    path: Path
    home: Path
    project: Path

    @property
    def models_path(self) -> Path:
        return self.path / "models.json"

    @property
    def settings_path(self) -> Path:
        return self.path / "settings.json"

    @property
    def sessions_path(self) -> Path:
        """Where pi keeps session files when no ``--session-dir`` is given."""
        return self.path / "sessions"

    def environment(self) -> dict[str, str]:
        """The whole environment for pi: no API keys or user settings leak in from outside,
        and nothing is fetched from the network at start-up."""
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.home),
            "PI_CODING_AGENT_DIR": str(self.path),
            "PI_OFFLINE": "1",
            "PI_SKIP_VERSION_CHECK": "1",
            "PI_TELEMETRY": "0",
            "NO_COLOR": "1",
        }


def models_config(base_url: str) -> dict:
    """models.json content: provider ``fake`` (OpenAI completions at ``base_url``) with the
    models ``fake-1`` and ``fake-2`` (a reasoning model: it has thinking levels)."""
    return {
        "providers": {
            FAKE_PROVIDER: {
                "baseUrl": base_url,
                "api": "openai-completions",
                "apiKey": "x",
                "compat": {"supportsDeveloperRole": False, "supportsReasoningEffort": False},
                "models": [{"id": FAKE_MODELS[0]}, {"id": FAKE_MODELS[1], "reasoning": True}],
            }
        }
    }


# USD per million tokens (models.json ``cost``): fake-2 costs ten times what fake-1 does.
FAKE_PRICES = {
    FAKE_MODELS[0]: {"input": 100.0, "output": 400.0, "cacheRead": 10.0, "cacheWrite": 0.0},
    FAKE_MODELS[1]: {"input": 1000.0, "output": 4000.0, "cacheRead": 100.0, "cacheWrite": 0.0},
}


def price_models(agent_dir: AgentDir, prices: dict = FAKE_PRICES) -> None:
    """Give the fake models prices in models.json, so that pi reports what they cost."""
    models = json.loads(agent_dir.models_path.read_text())
    for model in models["providers"][FAKE_PROVIDER]["models"]:
        model["cost"] = prices[model["id"]]
    _write_json(agent_dir.models_path, models)


def default_settings() -> dict:
    """settings.json content: ``fake/fake-1`` by default, and no automatic retries, so that a
    scripted HTTP error ends the run at once instead of after pi's back-off (seconds)."""
    return {
        "defaultProvider": FAKE_PROVIDER,
        "defaultModel": FAKE_MODELS[0],
        "quietStartup": True,
        "retry": {"enabled": False, "provider": {"maxRetries": 0}},
    }


def write_agent_dir(root: Path, base_url: str, settings: dict | None = None) -> AgentDir:
    """Create ``root/agent`` (0700), ``root/home`` and ``root/project`` and write models.json
    and settings.json (``settings`` replaces :func:`default_settings` when given)."""
    agent_dir = AgentDir(path=root / "agent", home=root / "home", project=root / "project")
    agent_dir.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    agent_dir.home.mkdir(parents=True, exist_ok=True)
    agent_dir.project.mkdir(parents=True, exist_ok=True)
    _write_json(agent_dir.models_path, models_config(base_url))
    _write_json(agent_dir.settings_path, default_settings() if settings is None else settings)
    return agent_dir


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


class PiExited(Exception):
    """pi ended while a test was waiting for a response or an event."""


class PiRpc(ProcessProtocol):
    """JSON lines to and from ``pi --mode rpc``.

    Every stdout record is kept in :attr:`records` (responses and events, in order), events
    also in :attr:`events`; stderr accumulates in :attr:`stderr`.
    """

    def __init__(self, reactor, timeout: float = DEFAULT_TIMEOUT):
        self._reactor = reactor
        self.timeout = timeout
        self.records: list[dict] = []
        self.events: list[dict] = []
        self.stderr = b""
        self.exit_reason = None
        self.non_json: list[bytes] = []
        """stdout lines that were not JSON (pi should never write any)."""
        self._buffer = b""
        self._event_counts: dict[str, int] = {}
        self._next_id = 0
        self._response_waiters: dict[str, defer.Deferred] = {}
        self._event_waiters: list[tuple[str, int, defer.Deferred]] = []
        self._exit_waiters: list[defer.Deferred] = []

    def send(self, command: dict) -> defer.Deferred:
        """Write ``command`` (an ``id`` is added when it has none); fires with pi's response."""
        if "id" not in command:
            self._next_id += 1
            command = {**command, "id": f"t{self._next_id}"}
        if self.exit_reason is not None:
            return defer.fail(self._exited_error())
        waiter = defer.Deferred()
        self._response_waiters[command["id"]] = waiter
        self.write_line(json.dumps(command))
        return self._limited(waiter, f"response to {command['type']}")

    def write_line(self, line: str) -> None:
        """Write one raw line to pi's stdin."""
        self.transport.write(line.encode("utf-8") + b"\n")

    def wait_for_event(self, event_type: str, n: int = 1) -> defer.Deferred:
        """Fires with the ``n``-th (1-based) event of ``event_type`` once it has been seen."""
        seen = self.events_of(event_type)
        if len(seen) >= n:
            return defer.succeed(seen[n - 1])
        if self.exit_reason is not None:
            return defer.fail(self._exited_error())
        waiter = defer.Deferred()
        self._event_waiters.append((event_type, n, waiter))
        return self._limited(waiter, f"event {event_type} #{n}")

    def events_of(self, event_type: str) -> list[dict]:
        return [event for event in self.events if event.get("type") == event_type]

    def text_deltas(self) -> list[str]:
        """The ``text_delta`` pieces streamed so far, in order."""
        return [
            event["assistantMessageEvent"]["delta"]
            for event in self.events_of("message_update")
            if event["assistantMessageEvent"]["type"] == "text_delta"
        ]

    def wait_for_exit(self) -> defer.Deferred:
        """Fires with the exit Failure's value (ProcessDone or ProcessTerminated)."""
        if self.exit_reason is not None:
            return defer.succeed(self.exit_reason)
        waiter = defer.Deferred()
        self._exit_waiters.append(waiter)
        return self._limited(waiter, "pi to exit")

    @defer.inlineCallbacks
    def stop(self):
        """Close stdin and wait for pi to exit; kill it if it does not exit in time."""
        if self.exit_reason is not None:
            return self.exit_reason
        self.transport.closeStdin()
        try:
            reason = yield self.wait_for_exit()
        except defer.TimeoutError:
            self.transport.signalProcess("KILL")
            reason = yield self.wait_for_exit()
        return reason

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            line = line.removesuffix(b"\r")
            try:
                record = json.loads(line)
            except ValueError:
                self.non_json.append(line)
                continue
            self._record(record)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason) -> None:
        self.exit_reason = reason.value
        ended = self._exited_error()
        for waiter in self._response_waiters.values():
            waiter.errback(ended)
        for _, _, waiter in self._event_waiters:
            waiter.errback(ended)
        self._response_waiters.clear()
        self._event_waiters.clear()
        waiting, self._exit_waiters = self._exit_waiters, []
        for waiter in waiting:
            waiter.callback(reason.value)

    def _exited_error(self) -> PiExited:
        stderr = self.stderr.decode(errors="replace")[-2000:]
        return PiExited(f"pi exited ({self.exit_reason}); stderr: {stderr}")

    def _record(self, record: dict) -> None:
        self.records.append(record)
        if record.get("type") == "response" and record.get("id") in self._response_waiters:
            self._response_waiters.pop(record["id"]).callback(record)
            return
        if record.get("type") == "response":
            return
        self.events.append(record)
        event_type = record.get("type")
        count = self._event_counts[event_type] = self._event_counts.get(event_type, 0) + 1
        still_waiting = []
        for waited_type, n, waiter in self._event_waiters:
            if waited_type == event_type and n == count:
                waiter.callback(record)
            else:
                still_waiting.append((waited_type, n, waiter))
        self._event_waiters = still_waiting

    def _limited(self, waiter: defer.Deferred, what: str) -> defer.Deferred:
        def explain(failure):
            failure.trap(defer.TimeoutError)
            raise defer.TimeoutError(
                f"waited {self.timeout}s for {what}; stderr: "
                f"{self.stderr.decode(errors='replace')[-2000:]}"
            )

        return waiter.addTimeout(self.timeout, self._reactor).addErrback(explain)


def spawn_pi(
    reactor,
    pi: tuple[str, ...],
    agent_dir: AgentDir,
    args=(),
    timeout: float = DEFAULT_TIMEOUT,
    cwd=None,
):
    """Start ``pi --mode rpc *args`` in ``cwd`` (default ``agent_dir.project``) with its
    hermetic environment. Returns the :class:`PiRpc`; commands can be sent at once (pi reads
    them when ready)."""
    protocol = PiRpc(reactor, timeout=timeout)
    argv = [*pi, "--mode", "rpc", *args]
    reactor.spawnProcess(
        protocol, argv[0], argv, env=agent_dir.environment(), path=str(cwd or agent_dir.project)
    )
    return protocol
