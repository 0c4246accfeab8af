"""Installing pi-server: ``pip install .`` without setuptools warnings, and the one-file
zipapp (scripts/zipapp, as ``tox -e zipapp`` builds it) serving on a bare Python."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.piagent import VERSION_ONLY_PI, repository_root
from tests.support.processes import free_port, health_ok, wait_until

# The interpreter the test env was made from: no pi-server, Twisted... of its own.
BARE_PYTHON = getattr(sys, "_base_executable", None) or sys.executable


def clean_environment(tmp_path) -> dict:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "VIRTUAL_ENV")
    }
    env["HOME"] = str(tmp_path / "home")
    return env


def test_pip_install_prints_no_setuptools_warning(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--verbose",
            "--no-deps",
            "--target",
            str(tmp_path / "target"),
            str(repository_root()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_environment(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    warnings = [
        line for line in output.splitlines() if "warn" in line.lower() and "Location" not in line
    ]
    assert warnings == []
    installed = tmp_path / "target"
    assert (installed / "piserver" / "agents" / "extensions" / "session.ts").is_file()
    assert list((installed / "twisted" / "plugins").glob("piserver*.py"))


def test_the_zipapp_starts_and_answers_health(tmp_path):
    pyz = tmp_path / "pi-server.pyz"
    env = clean_environment(tmp_path)
    built = subprocess.run(
        [str(repository_root() / "scripts" / "zipapp"), str(pyz)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "PYTHON": sys.executable},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    check = subprocess.run([BARE_PYTHON, "-I", "-c", "import twisted"], capture_output=True)
    assert check.returncode != 0, "the bare Python must not have Twisted of its own"

    port = free_port()
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                BARE_PYTHON,
                "-I",
                str(pyz),
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
                "--data-dir",
                str(tmp_path / "data"),
                "--pi",
                VERSION_ONLY_PI,
                "--auth-token",
                "zipapp-test-token",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**env, "SHIV_ROOT": str(tmp_path / "shiv")},
        )
    try:
        wait_until(lambda: health_ok(port) or server.poll() is not None, 120, "/health")
        assert server.poll() is None, log.read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    assert f"listening on 127.0.0.1:{port}" in text
    assert "zipapp-test-token" not in text
    assert Path(pyz).stat().st_size > 1_000_000
