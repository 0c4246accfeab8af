"""
pi-server as twistd runs it, in a child process of the test's reactor: for tests of
what only twistd sets up (the log observer, daemon mode), with the scripted LLM still
served by the test's own reactor.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from tests.support.piagent import VERSION_ONLY_PI, pi_option
from tests.support.processes import free_port, health_ok, wait_until

TWISTD = str(Path(sys.executable).parent / "twistd")
# A safety net against a hung start or stop, not a synchronisation delay.
WAIT_TIMEOUT = 60.0


def run_daemon(tmp_path: Path, token: str, *extra_args: str) -> tuple[int, str]:
    """``twistd piserver`` in daemon mode (``--pidfile``, ``--logfile``) over a data dir in
    ``tmp_path``: started, answering ``/health``, then stopped with SIGTERM. Returns the port
    it listened on and its log file's text once the daemon has exited."""
    pidfile = tmp_path / "piserver.pid"
    logfile = tmp_path / "piserver.log"
    port = free_port()
    started = subprocess.run(
        [
            TWISTD,
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(logfile),
            "piserver",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--data-dir",
            str(tmp_path / "data"),
            "--pi",
            VERSION_ONLY_PI,
            "--auth-token",
            token,
            *extra_args,
        ],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    # twistd returns once the daemon has detached.
    assert started.returncode == 0, started.stderr.decode()
    # (twistd writes it in place: it may be there and still empty.)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "the pidfile")
    pid = int(pidfile.read_text())
    wait_until(lambda: health_ok(port), 30, "/health to answer")
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pidfile.exists(), 30, "the pidfile to be removed")
    wait_until(lambda: not _alive(pid), 30, "the daemon to exit")
    return port, logfile.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _Output(ProcessProtocol):
    def __init__(self, owner):
        self.owner = owner

    def outReceived(self, data):
        self.owner._output(data)

    def errReceived(self, data):
        self.owner.stderr += data

    def processEnded(self, reason):
        self.owner._ended(reason.value.exitCode)


class TwistdServer:
    """``twistd -n piserver`` on a free loopback port, over ``agent_dir`` (its data dir).
    ``stdout`` collects what the process writes; ``started`` fires once it listens."""

    def __init__(self, reactor, agent_dir, pi_binary, token, extra_args=(), twistd_args=()):
        self.reactor = reactor
        self.port = free_port()
        self.stdout = b""
        self.stderr = b""
        self.exit_code = None
        self.started = Deferred()
        self.ended = Deferred()
        self._listening_mark = f"listening on 127.0.0.1:{self.port}".encode()
        args = [
            TWISTD,
            "-n",
            "--pidfile=",
            *twistd_args,
            "piserver",
            "--port",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--data-dir",
            str(agent_dir.path),
            "--pi",
            pi_option(pi_binary),
            "--auth-token",
            token,
            *extra_args,
        ]
        env = {
            **agent_dir.environment(),
            **{
                name: value
                for name, value in os.environ.items()
                if name in ("PI_SERVER_PROJECT_DIR", "PYTHONPATH")
            },
        }
        self.process = reactor.spawnProcess(
            _Output(self), TWISTD, args, env=env, path=str(agent_dir.project)
        )

    def wait_started(self) -> Deferred:
        return self.started.addTimeout(WAIT_TIMEOUT, self.reactor)

    def stop(self) -> Deferred:
        """SIGTERM; fires with the exit code once the process is gone."""
        if self.exit_code is None:
            self.process.signalProcess(signal.SIGTERM)
        return self.ended.addTimeout(WAIT_TIMEOUT, self.reactor)

    @property
    def lines(self) -> list[str]:
        return self.stdout.decode("utf-8", "replace").splitlines()

    def _output(self, data):
        self.stdout += data
        if not self.started.called and self._listening_mark in self.stdout:
            self.started.callback(self)

    def _ended(self, code):
        self.exit_code = code
        if not self.started.called:
            self.started.errback(
                RuntimeError(
                    f"twistd exited ({code}) before listening: {self.stderr.decode()[-2000:]}"
                    f"{self.stdout.decode()[-2000:]}"
                )
            )
        self.ended.callback(code)
