"""
``GET /ready``: whether this server can do its work now, for orchestrators that
route traffic only to ready instances. ``/health`` only says the process answers.
"""

import os
import shutil
from pathlib import Path

from twisted.web.resource import Resource

from piserver.common.httpjson import render_json


def readiness(pi_command, data_dir: Path, environ_path: str | None = None) -> dict:
    """The checks, each True or False: the agent command can still be run (it was
    checked at start; an upgrade or a removed node_modules breaks it), and the data dir
    and its sessions dir are writable (a full or read-only disk refuses new work)."""
    program = pi_command[0] if pi_command else ""
    found = shutil.which(program, path=environ_path) if program else None
    return {
        "agentCommand": found is not None and os.access(found, os.X_OK),
        "dataDir": all(
            os.access(path, os.W_OK | os.X_OK) for path in (data_dir, data_dir / "sessions")
        ),
    }


class ReadyResource(Resource):
    isLeaf = True

    def __init__(self, pi_command, data_dir: Path, environ_path: str | None = None):
        super().__init__()
        self._pi_command = tuple(pi_command)
        self._data_dir = Path(data_dir)
        self._path = environ_path

    def render_GET(self, request):
        checks = readiness(self._pi_command, self._data_dir, self._path)
        ready = all(checks.values())
        return render_json(request, 200 if ready else 503, {"ok": ready, "checks": checks})
