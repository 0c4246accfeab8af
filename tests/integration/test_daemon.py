"""twistd daemon mode: detaches, writes its pidfile, stops cleanly on SIGTERM."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.piagent import VERSION_ONLY_PI
from tests.support.processes import free_port, health_ok, wait_until

TWISTD = str(Path(sys.executable).parent / "twistd")


def test_daemon_start_and_stop(tmp_path):
    pidfile = tmp_path / "piserver.pid"
    logfile = tmp_path / "piserver.log"
    port = free_port()
    token = "daemon-test-token-value"
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
        ],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    # twistd returns once the daemon has detached.
    assert started.returncode == 0, started.stderr.decode()
    wait_until(pidfile.exists, 30, "the pidfile")
    pid = int(pidfile.read_text())
    wait_until(lambda: health_ok(port), 30, "/health to answer")
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pidfile.exists(), 30, "the pidfile to be removed")
    wait_until(lambda: not _alive(pid), 30, "the daemon to exit")
    log = logfile.read_text()
    assert "listening on 127.0.0.1:" in log
    assert "Server Shut Down" in log or "Main loop terminated" in log
    assert token not in log


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_usage_error_exits_nonzero_without_traceback(tmp_path):
    result = subprocess.run(
        [
            TWISTD,
            "-n",
            "piserver",
            "--port",
            "99999",
            "--data-dir",
            str(tmp_path),
            "--pi",
            VERSION_ONLY_PI,
        ],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert "1-65535" in output
    assert "Traceback" not in output
