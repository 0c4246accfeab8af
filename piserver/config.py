"""
Resolved server configuration: what the command line, the environment and the
data directory say, checked once at start.
"""

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attr
from OpenSSL import crypto
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.error import VerifyError
from twisted.logger import Logger, LogLevel
from twisted.python import usage

from piserver.agents.dotenv import load_dotenv
from piserver.agents.launchers.bwrap import BwrapUnusable
from piserver.agents.launchers.caches import COMPILE_CACHE
from piserver.agents.launchers.template import BadTemplate, parse_template
from piserver.agents.nativetools import EXTENSION_PATH, TOOLS_FILE_FLAG
from piserver.agents.projecttrust import TrustPolicy
from piserver.agents.version import INSTALL_HINT, UnsupportedAgent
from piserver.common.defaults import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDEMPOTENCY_WINDOW,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_PER_ADDRESS,
    DEFAULT_PORT,
)
from piserver.ops.logs import LOG_FORMATS, LOG_LEVELS
from piserver.repos.github import DEFAULT_API_URL as DEFAULT_GITHUB_API_URL
from piserver.repos.shipping import parse_author
from piserver.security.addresses import DEFAULT_IPV6_PREFIX, ForwardedHeader
from piserver.security.admission import default_max_pending, raise_nofile_limit
from piserver.security.tls import TlsFilesError, check_tls_files, is_tls_endpoint, tls_endpoint
from piserver.security.tokens import TokenError, load_or_create_server_token, read_token_file
from piserver.sessions.journal import JournalLimits
from piserver.sessions.permissions import PermissionMode

log = Logger()

SANDBOX_CHOICES = ("auto", "bwrap", "none")


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
    # Connections not yet authenticated, all addresses together (security/admission.py).
    max_pending: int = 512
    # The soft RLIMIT_NOFILE the default --max-pending was derived from (None: given).
    nofile_limit: int | None = None
    # An IPv6 peer's prefix that counts as one address for per-address limits.
    ipv6_prefix_length: int = DEFAULT_IPV6_PREFIX
    # Reverse proxies whose forwarding header names the client (security/addresses.py).
    trusted_proxies: tuple = ()
    forwarded_header: ForwardedHeader = ForwardedHeader.x_forwarded_for
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
    # Web Push (ops/push.py): on unless --no-push.
    push: bool = True
    # URL prefixes pushed to though not https or internal (--push-allow-endpoint).
    push_allowed_endpoints: tuple = ()
    # The CA trusted for push services' https instead of the system's (--push-ca-file).
    push_ca_file: Path | None = None
    # A new session's permission mode (sessions/permissions.py) unless it chooses one.
    permission_mode: str = "full"
    # Seconds an approval request waits for a person before the call is denied.
    approval_timeout: float = 600.0
    # pi's project trust (agents/projecttrust.py): ask, always or never.
    project_trust: TrustPolicy = TrustPolicy.ASK
    # Seconds the project trust question stays on offer.
    project_trust_timeout: float = 300.0
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
def options_first(argv: list[str], *names: str) -> list[str]:
    """``argv`` with the options ``names`` (``--name VALUE`` or ``--name=VALUE``) moved
    before the rest: usage.Options stops at the first argument, so that ``add phone
    --data-dir DIR`` works as well as ``--data-dir DIR add phone``."""
    moved, rest = [], []
    while argv:
        arg = argv.pop(0)
        if arg in names and argv:
            moved += [arg, argv.pop(0)]
        elif arg.startswith(tuple(f"{name}=" for name in names)):
            moved.append(arg)
        else:
            rest.append(arg)
    return moved + rest


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


def _tls_endpoint(options, port: str) -> str:
    cert, key = options["tls-cert"], options["tls-key"]
    if not (cert and key):
        raise usage.UsageError("--tls-cert and --tls-key go together: give both or neither")
    if not port.isdigit():
        raise usage.UsageError(
            f"--port {port!r}: --tls-cert/--tls-key need a port number (an endpoint "
            "string names its own files: ssl:PORT:privateKey=KEY:certKey=CERT)"
        )
    try:
        check_tls_files(cert, key)
    except TlsFilesError as e:
        raise usage.UsageError(str(e)) from None
    return tls_endpoint(int(port), options["host"], cert, key)


def _launcher(options) -> dict:
    """The config fields saying how agents are started (see launchers)."""
    sandbox = options["sandbox"]
    if sandbox not in SANDBOX_CHOICES:
        raise usage.UsageError(f"--sandbox {sandbox!r}: choose auto, bwrap or none")
    path = options.environ.get("PATH", os.defpath)
    if options["launcher-command"] is not None:
        if sandbox == "bwrap":
            raise usage.UsageError(
                "--launcher-command replaces the sandbox: give it or --sandbox bwrap"
            )
        try:
            words = parse_template(options["launcher-command"], path)
        except BadTemplate as e:
            raise usage.UsageError(f"--launcher-command: {e}") from None
        return {"sandbox": "command", "launcher_command": words}
    if sandbox == "none":
        return {"sandbox": "none"}
    bwrap = shutil.which(os.path.expanduser(options["bwrap"]), path=path)
    try:
        if bwrap is None:
            raise BwrapUnusable(f"{options['bwrap']} not found (install bubblewrap)")
        options.check_sandbox(bwrap, options.environ)
    except BwrapUnusable as e:
        if sandbox == "bwrap":
            raise usage.UsageError(f"--sandbox bwrap: {e}") from None
        return {"sandbox": "none", "sandbox_problem": str(e)}
    return {"sandbox": "bwrap", "bwrap": bwrap}


def _fill_compile_cache(options, cache: Path, pi, env, agent_version) -> Path | None:
    try:
        options.fill_cache(cache, pi, env, agent_version.pi, EXTENSION_PATH, TOOLS_FILE_FLAG)
    except (OSError, subprocess.SubprocessError) as e:
        log.warn(
            "sandboxed agents will start slower: cannot fill {cache}: {error}",
            cache=str(cache),
            error=str(e),
        )
        return None
    return cache


def resolve(options, reactor) -> ServerConfig:
    """The server's configuration from parsed ``options`` (tap.Options), the environment
    and the data dir; a ``usage.UsageError`` says what is wrong. ``reactor`` parses the
    endpoint (nothing listens yet)."""
    environ = options.environ
    port = options["port"] or environ.get("PI_SERVER_PORT") or str(DEFAULT_PORT)
    endpoint = endpoint_description(port, options["host"])
    if options["tls-cert"] or options["tls-key"]:
        endpoint = _tls_endpoint(options, port)
    for name in (
        "clone-timeout",
        "github-timeout",
        "journal-max-events",
        "send-buffer-limit",
        "max-agents",
        "agent-idle-timeout",
        "native-tool-timeout",
        "approval-timeout",
        "project-trust-timeout",
        "idempotency-window",
        "agent-probe-interval",
        "requests-per-second",
        "journal-max-bytes",
        "journal-max-age",
    ):
        if options[name] <= 0:
            raise usage.UsageError(f"--{name} must be positive")
    if options["permission-mode"] not in {str(m) for m in PermissionMode}:
        raise usage.UsageError(
            "--permission-mode must be one of " + ", ".join(str(m) for m in PermissionMode)
        )
    if options["project-trust"] not in {str(p) for p in TrustPolicy}:
        raise usage.UsageError(
            "--project-trust must be one of " + ", ".join(str(p) for p in TrustPolicy)
        )
    public_url = options["public-url"]
    if public_url is not None:
        if not public_url.startswith(("http://", "https://")) or "?" in public_url:
            raise usage.UsageError(f"--public-url {public_url!r}: give an http(s) URL")
        public_url = public_url.rstrip("/")
    if not 0 <= options["warm-agents"] <= options["max-agents"]:
        raise usage.UsageError("--warm-agents must be between 0 and --max-agents")
    if not 0 <= options["delta-merge-window"] <= 1:
        raise usage.UsageError("--delta-merge-window is 0 to 1 seconds")
    if options["max-frame-size"] < 1024:
        raise usage.UsageError("--max-frame-size must be at least 1024 bytes")
    for name in ("handshake-timeout", "keepalive-interval", "keepalive-timeout"):
        if options[name] <= 0:
            raise usage.UsageError(f"--{name} must be a positive number of seconds")
    for name in ("max-connections", "max-pending-per-address"):
        if options[name] < 1:
            raise usage.UsageError(f"--{name} must be at least 1")
    if options["max-pending"] is not None and options["max-pending"] < 1:
        raise usage.UsageError("--max-pending must be at least 1")
    if not 8 <= options["ipv6-prefix-length"] <= 128:
        raise usage.UsageError("--ipv6-prefix-length is 8 to 128")
    try:
        forwarded_header = ForwardedHeader(options["forwarded-header"].lower())
    except ValueError:
        raise usage.UsageError(
            "--forwarded-header is one of " + ", ".join(str(h) for h in ForwardedHeader)
        ) from None
    if options["max-pending"] is None:
        # Strangers' share of the descriptors this process may open (after lifting the
        # soft limit to the hard one: the reactor is epoll, any number will do).
        nofile_limit = raise_nofile_limit()
        max_pending = default_max_pending(nofile_limit)
    else:
        nofile_limit, max_pending = None, options["max-pending"]
    if options["log-level"] not in LOG_LEVELS:
        raise usage.UsageError(f"--log-level is one of {', '.join(LOG_LEVELS)}")
    if options["log-format"] not in LOG_FORMATS:
        raise usage.UsageError(f"--log-format is one of {', '.join(LOG_FORMATS)}")
    twistd = options.twistd_options()
    if twistd is not None and twistd.get("logfile") == "-" and not twistd.get("nodaemon"):
        raise usage.UsageError("a daemon cannot log to standard output (--logfile -)")

    git_author = None
    if options["git-author"] is not None:
        try:
            git_author = parse_author(options["git-author"])
        except ValueError as e:
            raise usage.UsageError(f"--git-author: {e}") from None

    data_dir = (
        Path(options["data-dir"]).expanduser() if options["data-dir"] else default_data_dir(environ)
    ).absolute()
    try:
        prepare_data_dir(data_dir)
    except OSError as e:
        raise usage.UsageError(f"data dir {data_dir} is not usable: {e.strerror or e}") from None

    pi = find_pi(options["pi"], environ)
    if pi is None:
        raise usage.UsageError(f"the pi agent was not found: {INSTALL_HINT}")

    try:
        dotenv, problems = load_dotenv(data_dir / ".env")
    except OSError as e:
        raise usage.UsageError(f"cannot read {data_dir / '.env'}: {e.strerror or e}") from None
    env = {**environ, **dotenv}
    launcher = _launcher(options)
    try:
        agent_version = options.probe_agent(pi, env)
    except UnsupportedAgent as e:
        raise usage.UsageError(str(e)) from None
    if launcher["sandbox"] == "bwrap":
        launcher["compile_cache"] = _fill_compile_cache(
            options, data_dir / COMPILE_CACHE, pi, env, agent_version
        )

    if options["no-auth"]:
        token, source = None, "disabled"
    else:
        explicit = options["auth-token"] or environ.get("PI_SERVER_AUTH_TOKEN")
        try:
            if options["auth-token-file"]:
                if options["auth-token"]:
                    raise usage.UsageError("--auth-token and --auth-token-file: give one of them")
                explicit = read_token_file(Path(options["auth-token-file"]).expanduser())
            token, source = load_or_create_server_token(data_dir, explicit)
        except (OSError, TokenError) as e:
            raise usage.UsageError(f"cannot read or store the server token: {e}") from None

    github_api_url = (
        options["github-api-url"]
        or environ.get("PI_SERVER_GITHUB_API_URL")
        or DEFAULT_GITHUB_API_URL
    ).rstrip("/")
    if not github_api_url.startswith(("http://", "https://")):
        raise usage.UsageError(f"--github-api-url {github_api_url!r}: not an http(s) URL")

    try:
        serverFromString(reactor, endpoint)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise usage.UsageError(f"--port {port!r}: {e}") from None
    except (VerifyError, crypto.Error) as e:
        raise usage.UsageError(
            f"--port {port!r}: the TLS certificate or key is not usable: {e}"
        ) from None

    for name in ("daily-budget", "daily-token-budget"):
        if options[name] is not None and not 0 < options[name] < float("inf"):
            raise usage.UsageError(f"--{name} must be positive")
    try:
        budget_timezone = ZoneInfo(options["budget-timezone"])
    except (ValueError, ZoneInfoNotFoundError):
        raise usage.UsageError(
            f"--budget-timezone {options['budget-timezone']!r}: not an IANA time zone"
        ) from None

    return ServerConfig(
        endpoint=endpoint,
        data_dir=data_dir,
        pi_command=pi,
        agent_version=agent_version,
        auth_token=token,
        auth_token_source=source,
        max_frame_size=options["max-frame-size"],
        github_api_url=github_api_url,
        clone_timeout=options["clone-timeout"],
        journal_limits=JournalLimits(
            max_events=options["journal-max-events"],
            max_bytes=options["journal-max-bytes"],
            max_age=options["journal-max-age"],
            # Retention drops whole segments: keep them small beside the limits.
            segment_events=max(1, min(10_000, options["journal-max-events"] // 8)),
            segment_bytes=max(4096, min(4 * 1024 * 1024, options["journal-max-bytes"] // 8)),
        ),
        delta_merge_window=options["delta-merge-window"],
        send_buffer_limit=options["send-buffer-limit"],
        max_agents=options["max-agents"],
        warm_agents=options["warm-agents"],
        agent_idle_timeout=options["agent-idle-timeout"],
        native_tool_timeout=options["native-tool-timeout"],
        permission_mode=options["permission-mode"],
        approval_timeout=options["approval-timeout"],
        project_trust=TrustPolicy(options["project-trust"]),
        project_trust_timeout=options["project-trust-timeout"],
        public_url=public_url,
        idempotency_window=options["idempotency-window"],
        requests_per_second=options["requests-per-second"],
        github_timeout=options["github-timeout"],
        dotenv_names=frozenset(dotenv),
        env=env,
        dotenv_problems=tuple(problems),
        tls=is_tls_endpoint(endpoint),
        allowed_origins=frozenset(options.allowed_origins),
        handshake_timeout=options["handshake-timeout"],
        keepalive_interval=options["keepalive-interval"],
        keepalive_timeout=options["keepalive-timeout"],
        max_connections=options["max-connections"],
        log_level=LogLevel.levelWithName(options["log-level"]),
        agent_probe_interval=options["agent-probe-interval"],
        max_pending_per_address=options["max-pending-per-address"],
        max_pending=max_pending,
        nofile_limit=nofile_limit,
        ipv6_prefix_length=options["ipv6-prefix-length"],
        trusted_proxies=tuple(options.trusted_proxies),
        forwarded_header=forwarded_header,
        server_names=frozenset(
            options.server_names
            | ({options["host"]} if options["host"] not in ("0.0.0.0", "::") else set())
        ),
        log_health=not options["no-health-log"],
        metrics_token=options["metrics-token"] or environ.get("PI_SERVER_METRICS_TOKEN") or None,
        notify_urls=tuple(options.notify_urls),
        import_from=tuple(options.import_from) or default_import_from(environ),
        notify_secret=options["notify-secret"] or environ.get("PI_SERVER_NOTIFY_SECRET") or None,
        push=not options["no-push"],
        push_allowed_endpoints=tuple(options.push_allowed_endpoints),
        push_ca_file=Path(options["push-ca-file"]) if options["push-ca-file"] else None,
        git_author=git_author,
        daily_budget=options["daily-budget"],
        daily_token_budget=options["daily-token-budget"],
        budget_timezone=budget_timezone,
        **launcher,
    )


def endpoint_description(port: str, host: str) -> str:
    """A port number becomes a TCP endpoint on ``host``; anything else is an endpoint string."""
    if port.isdigit():
        number = int(port)
        # 0 (any free port) is allowed: tests and scripts use it.
        if number > 65535:
            raise usage.UsageError(f"--port {port}: a port number is 1-65535") from None
        return f"tcp:{number}:interface={quoteStringArgument(host)}"
    if ":" not in port:
        raise usage.UsageError(
            f"--port {port!r}: give a port number or an endpoint such as tcp:3141 or unix:/path"
        )
    return port
