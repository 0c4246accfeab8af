"""systemd/pi-server.service: systemd accepts it, and its ExecStart is a valid start."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from piserver.tap import Options
from tests.support.piagent import VERSION_ONLY_PI, repository_root

UNIT = repository_root() / "systemd" / "pi-server.service"
INSTALLED = "/opt/pi-server/.venv/bin/pi-server"


def exec_start() -> list[str]:
    [line] = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_exec_start_options_parse(tmp_path):
    program, *args = exec_start()
    assert program == INSTALLED
    args = [str(tmp_path / "data") if a == "/var/lib/pi-server" else a for a in args]
    options = Options(environ={"PATH": "/usr/bin:/bin"})
    options.parseOptions([*args, "--pi", VERSION_ONLY_PI])
    assert options.config.endpoint == "tcp:3141:interface=0.0.0.0"
    assert options.config.log_health is False


def test_the_unit_allows_far_more_descriptors_than_strangers_may_hold():
    [line] = [line for line in UNIT.read_text().splitlines() if line.startswith("LimitNOFILE=")]
    assert int(line.removeprefix("LimitNOFILE=")) >= 16384


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart's program exists: point it at this env's pi-server.
    pi_server = Path(sys.executable).parent / "pi-server"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(pi_server)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # It exits 0 on lines it ignores: any output is a problem.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
