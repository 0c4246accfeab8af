"""twistd daemon mode: detaches, writes its pidfile, stops cleanly on SIGTERM."""

import subprocess

from tests.support.piagent import VERSION_ONLY_PI
from tests.support.twistdprocess import TWISTD, run_daemon


def test_daemon_start_and_stop(tmp_path):
    token = "daemon-test-token-value"
    _port, log = run_daemon(tmp_path, token)
    assert "listening on 127.0.0.1:" in log
    assert "Server Shut Down" in log or "Main loop terminated" in log
    assert token not in log


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
