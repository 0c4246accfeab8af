"""
``pi-server audit [--since WHEN] [--device NAME] [--session ID] [--json]``: what was
changed, by whom, from ``<data-dir>/audit.log`` and its rotated files (see
ops/audit.py), oldest first. ``--since`` takes an ISO-8601 time (``2026-12-02``,
``2026-12-02T13:00:00Z``) or an age (``90s``, ``30m``, ``2h``, ``7d``).
"""

import datetime
import json
import re
from pathlib import Path

from twisted.python import usage

from piserver.config import default_data_dir
from piserver.ops.audit import AUDIT_FILE, read_entries

EXIT_OK = 0
EXIT_USAGE = 2
SYNOPSIS = (
    "Usage: pi-server audit [--data-dir DIR] [--since WHEN] [--device NAME] [--session ID] [--json]"
)
_AGE = re.compile(r"(\d+)([smhd])\Z")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Who used the server token, in the text listing (its entries have no device).
SERVER_TOKEN = "(server token)"


def parse_since(text: str, now: float) -> datetime.datetime:
    """The moment ``--since`` names, in UTC; UsageError if it names none."""
    age = _AGE.match(text.strip())
    if age:
        seconds = int(age.group(1)) * _SECONDS[age.group(2)]
        return datetime.datetime.fromtimestamp(now - seconds, tz=datetime.UTC)
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise usage.UsageError(
            f"--since {text!r}: give an ISO-8601 time or an age such as 30m, 2h or 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment


class AuditOptions(usage.Options):
    synopsis = SYNOPSIS
    longdesc = "Every request that changed something, from <data-dir>/audit.log, oldest first."
    optFlags = [["json", None, "print the entries as the JSON lines they are stored as"]]
    optParameters = [
        ["data-dir", None, None, "data directory [default: as the server's]"],
        ["since", None, None, "only entries from this time or age on (ISO-8601, 30m, 2h, 7d)"],
        ["device", None, None, "only entries of this device"],
        ["session", None, None, "only entries about this session"],
    ]


def run(argv, environ, clock, stdout, stderr) -> int:
    """Run ``pi-server audit ARGV``; return the exit status."""
    options = AuditOptions()
    try:
        options.parseOptions(list(argv))
        since = parse_since(options["since"], clock()) if options["since"] else None
    except usage.UsageError as e:
        stderr.write(f"pi-server audit: {e}\n{SYNOPSIS}\n")
        return EXIT_USAGE
    chosen = options["data-dir"]
    data_dir = Path(chosen).expanduser() if chosen else default_data_dir(environ)
    path = data_dir / AUDIT_FILE
    if not path.exists():
        stderr.write(f"pi-server audit: no audit log in {data_dir} yet\n")
    for entry in read_entries(path):
        if options["device"] is not None and entry.device != options["device"]:
            continue
        if options["session"] is not None and entry.session_id != options["session"]:
            continue
        if since is not None and _moment(entry.time) < since:
            continue
        if options["json"]:
            stdout.write(json.dumps(entry.to_json()) + "\n")
        else:
            outcome = "ok" if entry.ok else entry.error or "failed"
            stdout.write(
                f"{entry.time}  {entry.device or SERVER_TOKEN}  {entry.method}  "
                f"{entry.session_id or '-'}  {entry.repo_id or '-'}  {outcome}\n"
            )
    return EXIT_OK


def _moment(text: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
