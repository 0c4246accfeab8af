"""
Resolved server configuration: what the command line, the environment and the
data directory say, checked once at start.
"""

import os
import shlex
import shutil
from pathlib import Path

import attr
from twisted.logger import LogLevel

from piserver.common.defaults import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDEMPOTENCY_WINDOW,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_PER_ADDRESS,
)


@attr.frozen
class ServerConfig:
    endpoint: str
    data_dir: Path
    pi_command: tuple[str, ...]
    # What `pi --version` said at start (agentversion.AgentVersion).
    agent_version: object
    auth_token: str | None
    auth_token_source: str
    max_frame_size: int
    github_api_url: str
    clone_timeout: float
    journal_limits: object
    delta_merge_window: float
    send_buffer_limit: int
    max_agents: int
    warm_agents: int
    agent_idle_timeout: float
    native_tool_timeout: float
    requests_per_second: float
    github_timeout: float
    # Environment for child processes: the server's own plus the data dir's .env.
    env: dict = attr.field(eq=False)
    dotenv_problems: tuple = ()
    # Names defined in the data dir's .env (their values are secrets such as API keys).
    dotenv_names: frozenset = frozenset()
    # The endpoint is TLS (https/wss on the same port).
    tls: bool = False
    # Origins (origins.Origin) besides the server's own that browsers may open /rpc from.
    allowed_origins: frozenset = frozenset()
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # (name, mail) of session.commit's author; None: git's config, else pi-server's own.
    git_author: tuple | None = None
    # Events below this level are not logged (debug events of libraries hold raw requests).
    log_level: LogLevel = LogLevel.info
    max_pending_per_address: int = DEFAULT_MAX_PENDING_PER_ADDRESS
    # Seconds a device's idempotency keys are remembered (wire/idempotency.py).
    idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW
    # Seconds of agent silence (with a command waiting or a run on) before a liveness probe.
    agent_probe_interval: float = 30.0
    # Host names the server is reached by (--server-name and a specific --host).
    server_names: frozenset = frozenset()
    # GET /health requests appear in the access log.
    log_health: bool = True
    # Scrapers of /metrics present it as a bearer token; None: /metrics is open.
    metrics_token: str | None = None
    # URLs notified of finished runs, waiting input and failed agents (notify.py).
    notify_urls: tuple = ()
    # Key of the notifications' HMAC signature; None: unsigned.
    notify_secret: str | None = None
    # A new session's permission mode (sessions/permissions.py) unless it chooses one.
    permission_mode: str = "full"
    # Seconds an approval request waits for a person before the call is denied.
    approval_timeout: float = 600.0
    # The server's URL for a notification's reader: signed approval action URLs; None: none.
    public_url: str | None = None
    # How agents are started: "bwrap" (sandboxed), "command" (launcher_command) or "none".
    sandbox: str = "none"
    # Why --sandbox auto chose "none": bubblewrap's failure, warned about at every start.
    sandbox_problem: str | None = None
    bwrap: str | None = None
    # Node's compile cache for sandboxed agents (read-only to them), in the data dir.
    compile_cache: Path | None = None
    # --launcher-command's words (launchers.template.parse_template).
    launcher_command: tuple | None = None
    # Server-wide daily budgets (sessions/budgets.py): USD, tokens; None: no limit.
    daily_budget: float | None = None
    daily_token_budget: int | None = None
    # The IANA time zone whose midnight starts a budget day (a zoneinfo.ZoneInfo).
    budget_timezone: object = None
    # Directories of pi session files that sessions.importable lists (--import-from).
    import_from: tuple = ()

    @property
    def github_token(self) -> str | None:
        return self.env.get("GITHUB_TOKEN") or None


def default_import_from(environ) -> tuple:
    """pi's own sessions dir of the server's user (~/.pi/agent/sessions)."""
    home = environ.get("HOME") or os.path.expanduser("~")
    return (Path(home) / ".pi" / "agent" / "sessions",)


# The --data-dir option of the commands that work on a data dir without a server
# (``pi-server token``, ``pi-server session``), as twistd usage parameters.
DATA_DIR_OPTION = (
    "data-dir",
    None,
    None,
    "data directory [default: as the server's: $PI_SERVER_DATA_DIR, "
    "$XDG_DATA_HOME/pi-server or ~/.local/share/pi-server]",
)


def default_data_dir(environ) -> Path:
    if environ.get("PI_SERVER_DATA_DIR"):
        return Path(environ["PI_SERVER_DATA_DIR"]).expanduser()
    if environ.get("XDG_DATA_HOME"):
        return Path(environ["XDG_DATA_HOME"]).expanduser() / "pi-server"
    return Path(environ.get("HOME") or Path.home()) / ".local" / "share" / "pi-server"


def project_dir(environ) -> Path:
    """The checkout whose scripts/install-pi put pi into node_modules/."""
    if environ.get("PI_SERVER_PROJECT_DIR"):
        return Path(environ["PI_SERVER_PROJECT_DIR"])
    return Path(__file__).resolve().parent.parent


def find_pi(explicit: str | None, environ) -> tuple[str, ...] | None:
    """The agent command: --pi, $PI_SERVER_PI, `pi` on PATH, then the project-local install
    (run by the project-local Node.js when there is one). --pi and $PI_SERVER_PI are a path
    or a command line (``node /opt/pi/cli.js``), split as a shell would."""
    for candidate in (explicit, environ.get("PI_SERVER_PI")):
        if candidate:
            words = shlex.split(candidate)
            found = (
                shutil.which(os.path.expanduser(words[0]), path=environ.get("PATH"))
                if words
                else None
            )
            return (found, *words[1:]) if found else None
    on_path = shutil.which("pi", path=environ.get("PATH"))
    if on_path:
        return (on_path,)
    return project_pi(project_dir(environ))


def project_pi(project: Path) -> tuple[str, ...] | None:
    """The pi that scripts/install-pi put into ``project``'s node_modules/, with the Node.js
    it installed beside it where the machine's own is too old for pi."""
    bin_dir = project / "node_modules" / ".bin"
    pi = bin_dir / "pi"
    if not os.access(pi, os.X_OK):
        return None
    node = bin_dir / "node"
    if os.access(node, os.X_OK):
        return (str(node), str(pi))
    return (str(pi),)


def prepare_data_dir(path: Path) -> None:
    """Create the data dir (0700) and its sessions/; raise OSError if unusable."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    (path / "sessions").mkdir(mode=0o700, exist_ok=True)
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise PermissionError(f"{path} is not readable and writable")
