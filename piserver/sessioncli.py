"""
``pi-server session export ID [--to DIR]``: a server session back to pi in a terminal.
Writes the session's conversation (see sessions/export.py) where pi's ``--resume``
finds it (``DIR/--<cwd>--/<time>_<id>.jsonl``, DIR by default pi's own sessions dir)
and prints the ``pi --session FILE`` command that continues it. Reads the data dir;
the server need not be stopped (an unfinished last line is left out).
"""

import os
import shlex
from pathlib import Path

from twisted.python import usage

from piserver.common.errors import RpcError
from piserver.common.files import CorruptFileError, load_json, write_bytes_atomic
from piserver.config import DATA_DIR_OPTION, default_data_dir, options_first
from piserver.sessions.export import desk_cwd, export_session
from piserver.sessions.pifiles import encode_cwd
from piserver.sessions.session import SESSION_ID
from piserver.tokencli import EXIT_FAILED, EXIT_OK, EXIT_USAGE

SYNOPSIS = "Usage: pi-server session [--data-dir DIR] export SESSION_ID [--to DIR]"
# The file is written, not sent in a frame: only a sanity bound.
CLI_MAX_BYTES = 1 << 30


def default_pi_sessions(environ) -> Path:
    """pi's sessions dir: ``$PI_CODING_AGENT_DIR/sessions``, else ~/.pi/agent/sessions."""
    if environ.get("PI_CODING_AGENT_DIR"):
        return Path(environ["PI_CODING_AGENT_DIR"]).expanduser() / "sessions"
    return Path(environ.get("HOME") or Path.home()) / ".pi" / "agent" / "sessions"


class ExportOptions(usage.Options):
    synopsis = "SESSION_ID [--to DIR]"
    optParameters = [
        [
            "to",
            None,
            None,
            "pi's sessions dir to write into [default: $PI_CODING_AGENT_DIR/sessions or "
            "~/.pi/agent/sessions]",
        ],
    ]

    def parseOptions(self, options=None):
        # ``export ID --to DIR`` as well as ``export --to DIR ID``: getopt stops at the id.
        super().parseOptions(options_first(list(options or []), "--to"))

    def parseArgs(self, session_id):
        if not SESSION_ID.match(session_id):
            raise usage.UsageError(f"{session_id[:80]!r} is not a session id (see session.list)")
        self["session_id"] = session_id


class SessionOptions(usage.Options):
    synopsis = SYNOPSIS
    optParameters = [list(DATA_DIR_OPTION)]
    subCommands = [
        ["export", None, ExportOptions, "write a session for pi --resume and print the command"],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("give a command: export SESSION_ID")


def run(argv, environ, clock, stdout, stderr) -> int:
    """Run ``pi-server session ARGV``; return the exit status."""
    options = SessionOptions()
    try:
        options.parseOptions(options_first(list(argv), "--data-dir"))
    except usage.UsageError as e:
        stderr.write(f"pi-server session: {e}\n{SYNOPSIS}\n")
        return EXIT_USAGE
    chosen = options["data-dir"]
    data_dir = (Path(chosen).expanduser() if chosen else default_data_dir(environ)).absolute()
    session_id = options.subOptions["session_id"]
    directory = data_dir / "sessions" / session_id
    target_dir = options.subOptions["to"]
    pi_sessions = Path(target_dir).expanduser().absolute() if target_dir else None
    try:
        record = load_json(directory / "session.json")
        if not isinstance(record, dict) or record.get("sessionId") != session_id:
            stderr.write(f"pi-server session export: no session {session_id} in {data_dir}\n")
            return EXIT_FAILED
        file_name, content = export_session(directory, record, clock(), CLI_MAX_BYTES)
        folder = (pi_sessions or default_pi_sessions(environ)) / encode_cwd(desk_cwd(record))
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / file_name
        write_bytes_atomic(path, content)
    except RpcError as e:
        stderr.write(f"pi-server session export: {e.message}\n")
        return EXIT_FAILED
    except (CorruptFileError, OSError) as e:
        stderr.write(f"pi-server session export: {e}\n")
        return EXIT_FAILED
    stderr.write(f"wrote {path}; continue it in a terminal with:\n")
    stdout.write(f"pi --session {shlex.quote(os.fspath(path))}\n")
    return EXIT_OK
