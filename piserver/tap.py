"""
``twistd piserver``: command-line options and the service tree.
"""

import os
import shutil
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from OpenSSL import crypto
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.error import VerifyError
from twisted.logger import Logger, LogLevel
from twisted.python import usage

from piserver.agents.dotenv import load_dotenv
from piserver.agents.launchers.bwrap import BwrapUnusable, check_bwrap
from piserver.agents.launchers.caches import COMPILE_CACHE
from piserver.agents.launchers.caches import fill as fill_cache
from piserver.agents.launchers.template import BadTemplate, parse_template
from piserver.agents.nativetools import DEFAULT_CALL_TIMEOUT, EXTENSION_PATH, TOOLS_FILE_FLAG
from piserver.agents.protocol import DEFAULT_PROBE_INTERVAL
from piserver.agents.version import INSTALL_HINT, UnsupportedAgent, probe
from piserver.common.defaults import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDEMPOTENCY_WINDOW,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_PENDING_PER_ADDRESS,
    DEFAULT_PORT,
)
from piserver.config import (
    ServerConfig,
    default_data_dir,
    default_import_from,
    find_pi,
    prepare_data_dir,
)
from piserver.ops.logs import DEFAULT_LOG_FORMAT, DEFAULT_LOG_LEVEL, LOG_FORMATS, LOG_LEVELS
from piserver.repos.github import DEFAULT_API_URL as DEFAULT_GITHUB_API_URL
from piserver.repos.shipping import parse_author
from piserver.security.origins import parse_origin
from piserver.security.tls import TlsFilesError, check_tls_files, is_tls_endpoint, tls_endpoint
from piserver.security.tokens import TokenError, load_or_create_server_token, read_token_file
from piserver.sessions import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_AGENTS, DEFAULT_WARM_AGENTS
from piserver.sessions.approvals import DEFAULT_APPROVAL_TIMEOUT
from piserver.sessions.journal import JournalLimits
from piserver.sessions.permissions import PermissionMode
from piserver.wire.connection import DEFAULT_SEND_BUFFER_LIMIT

log = Logger()


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


SANDBOX_CHOICES = ("auto", "bwrap", "none")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serves /rpc (WebSocket), / and /health on one port and drives "
        "`pi --mode rpc` agent processes for its clients."
    )
    optParameters = [
        [
            "port",
            "p",
            None,
            f"port number or Twisted endpoint string [default: $PI_SERVER_PORT or {DEFAULT_PORT}]",
        ],
        ["host", None, "0.0.0.0", "interface to listen on when --port is a number"],
        [
            "data-dir",
            None,
            None,
            "data directory [default: $PI_SERVER_DATA_DIR, $XDG_DATA_HOME/pi-server or "
            "~/.local/share/pi-server]",
        ],
        [
            "pi",
            None,
            None,
            "the pi agent command: a path, or a command line such as 'node /opt/pi/cli.js' "
            "[default: $PI_SERVER_PI, pi on PATH, or the project's node_modules/.bin/pi run by "
            "its node_modules/.bin/node]",
        ],
        [
            "auth-token",
            None,
            None,
            "token clients must present; every local user can read a command line: prefer "
            "--auth-token-file or $PI_SERVER_AUTH_TOKEN [default: <data-dir>/server-token]",
        ],
        [
            "auth-token-file",
            None,
            None,
            "file holding the token clients must present (keep it 0600)",
        ],
        [
            "max-frame-size",
            None,
            DEFAULT_MAX_FRAME_SIZE,
            "largest WebSocket frame accepted, in bytes",
            int,
        ],
        [
            "max-agents",
            None,
            DEFAULT_MAX_AGENTS,
            "session agents running at once; the longest idle one is stopped to start another",
            int,
        ],
        [
            "warm-agents",
            None,
            DEFAULT_WARM_AGENTS,
            "agents started ahead, so that creating a chat session does not wait for one "
            "(0: none); they count against --max-agents",
            int,
        ],
        [
            "agent-idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "seconds after which the agent of a session nobody is attached to is stopped "
            "(it restarts on demand)",
            float,
        ],
        [
            "requests-per-second",
            None,
            50.0,
            "requests a connection may send per second on average (bursts of twice that); "
            "more are answered rate_limited",
            float,
        ],
        [
            "agent-probe-interval",
            None,
            DEFAULT_PROBE_INTERVAL,
            "seconds an agent may be silent while a command waits or a run goes on before it "
            "is asked for its state; no answer within 10 s more: it is hung, killed and "
            "restarted",
            float,
        ],
        [
            "idempotency-window",
            None,
            DEFAULT_IDEMPOTENCY_WINDOW,
            "seconds a device's request keys are remembered: a repeat within them never runs again",
            float,
        ],
        [
            "native-tool-timeout",
            None,
            DEFAULT_CALL_TIMEOUT,
            "seconds a native tool call waits for a device before it fails",
            float,
        ],
        [
            "permission-mode",
            None,
            "full",
            "what a new session's agent may do without asking: full, ask, edits, readonly or "
            "rules (a session.create can choose another)",
        ],
        [
            "approval-timeout",
            None,
            DEFAULT_APPROVAL_TIMEOUT,
            "seconds a tool call waits for a person's approval before it is denied",
            float,
        ],
        [
            "public-url",
            None,
            None,
            "the server's URL as a notification's reader reaches it (https://host:port): "
            "input_needed notifications then carry signed one-time allow/deny URLs",
        ],
        [
            "send-buffer-limit",
            None,
            DEFAULT_SEND_BUFFER_LIMIT,
            "bytes that may wait for a slow client before its connection is closed",
            int,
        ],
        ["journal-max-events", None, 100_000, "events kept per session for resume", int],
        [
            "journal-max-bytes",
            None,
            128 * 1024 * 1024,
            "bytes of journal kept per session for resume",
            int,
        ],
        ["journal-max-age", None, 7 * 24 * 3600.0, "seconds an event is kept for resume", float],
        [
            "delta-merge-window",
            None,
            0.03,
            "seconds consecutive text deltas may be merged for delta-mode clients (0: never)",
            float,
        ],
        ["clone-timeout", None, 300.0, "seconds a git clone may take before it is stopped", float],
        ["github-timeout", None, 30.0, "seconds to wait for each GitHub API answer", float],
        [
            "github-api-url",
            None,
            None,
            f"GitHub API base URL, for GitHub Enterprise [default: $PI_SERVER_GITHUB_API_URL or "
            f"{DEFAULT_GITHUB_API_URL}]",
        ],
        [
            "tls-cert",
            None,
            None,
            "PEM certificate (its chain may follow): serve https and wss, with --tls-key",
        ],
        ["tls-key", None, None, "unencrypted PEM private key of --tls-cert"],
        [
            "handshake-timeout",
            None,
            DEFAULT_HANDSHAKE_TIMEOUT,
            "seconds a client may take to send its WebSocket upgrade request",
            float,
        ],
        [
            "keepalive-interval",
            None,
            DEFAULT_KEEPALIVE_INTERVAL,
            "seconds between WebSocket pings to each client",
            float,
        ],
        [
            "keepalive-timeout",
            None,
            DEFAULT_KEEPALIVE_TIMEOUT,
            "seconds a client has to answer a ping before it is dropped",
            float,
        ],
        [
            "max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "WebSocket connections served at once; more are refused with HTTP 503",
            int,
        ],
        [
            "max-pending-per-address",
            None,
            DEFAULT_MAX_PENDING_PER_ADDRESS,
            "connections one address may have open that are still sending their request "
            "(before any authentication); more are refused with HTTP 503",
            int,
        ],
        [
            "log-level",
            None,
            DEFAULT_LOG_LEVEL,
            f"least severe events logged: {', '.join(LOG_LEVELS)} (debug shows every "
            "WebSocket frame; credentials are redacted at every level)",
        ],
        [
            "log-format",
            None,
            DEFAULT_LOG_FORMAT,
            "text, or json: one JSON object per line with the event's fields",
        ],
        [
            "notify-secret",
            None,
            None,
            "key of the HMAC-SHA256 signature (X-Pi-Server-Signature) of each notification "
            "[default: $PI_SERVER_NOTIFY_SECRET, else unsigned]",
        ],
        [
            "daily-budget",
            None,
            None,
            "USD the agents may spend per day (as pi prices it from models.json); a run "
            "crossing it is stopped and later prompts are refused until the day ends "
            "[default: no limit]",
            float,
        ],
        [
            "daily-token-budget",
            None,
            None,
            "tokens the agents may use per day, for models without prices [default: no limit]",
            int,
        ],
        [
            "budget-timezone",
            None,
            "UTC",
            "IANA time zone (such as Europe/Paris) whose midnight starts a budget day",
        ],
        [
            "metrics-token",
            None,
            None,
            "token scrapers present (Authorization: Bearer) for GET /metrics "
            "[default: $PI_SERVER_METRICS_TOKEN, else /metrics is open like /health]",
        ],
        [
            "git-author",
            None,
            None,
            "author of session.commit's commits, \"Name <mail>\" [default: git's user.name "
            "and user.email, else pi-server <pi-server@localhost>]",
        ],
        [
            "sandbox",
            None,
            "auto",
            "where agents run: bwrap (a bubblewrap sandbox per agent), none, or auto (bwrap "
            "when it works here, else none with a warning)",
        ],
        ["bwrap", None, "bwrap", "the bubblewrap program (a path, or a name on PATH)"],
        [
            "launcher-command",
            None,
            None,
            "run each agent behind this command prefix (docker run -i ..., kubectl exec -i "
            "..., ssh ...), with {cwd}, {session} and {uid} filled in; replaces the sandbox",
        ],
    ]
    optFlags = [
        ["no-auth", None, "accept /rpc connections without a token (unsafe)"],
        ["no-health-log", None, "leave GET /health requests out of the access log"],
    ]

    def __init__(
        self, environ=None, probe_agent=probe, check_sandbox=check_bwrap, fill_cache=fill_cache
    ):
        super().__init__()
        self.environ = dict(os.environ if environ is None else environ)
        self._probe_agent = probe_agent
        self._check_sandbox = check_sandbox
        self._fill_cache = fill_cache
        self.allowed_origins = set()
        self.server_names = set()
        self.notify_urls = []
        self.import_from = []

    def opt_allowed_origin(self, value):
        """
        a browser origin (scheme://host[:port]) besides the server's own that may open
        /rpc; repeatable
        """
        try:
            self.allowed_origins.add(parse_origin(value))
        except ValueError as e:
            raise usage.UsageError(f"--allowed-origin {value!r}: {e}") from None

    def opt_server_name(self, value):
        """
        a host name clients reach this server by, besides its addresses, localhost and the
        machine's host name (browser origins and, on loopback, Host headers must name one);
        repeatable
        """
        name = value.strip()
        if not name or any(c in name for c in "/:?#@ ") and not name.startswith("["):
            raise usage.UsageError(f"--server-name {value!r}: give a host name or address")
        self.server_names.add(name)

    def opt_notify_url(self, value):
        """
        POST a JSON notification here when a run ends, the agent waits for an answer or
        fails; repeatable
        """
        if not value.startswith(("http://", "https://")):
            raise usage.UsageError(f"--notify-url {value!r}: not an http(s) URL")
        self.notify_urls.append(value)

    def opt_import_from(self, value):
        """
        a directory of pi session files (pi's sessions dir) that sessions.importable lists
        and session.import copies from; repeatable [default: ~/.pi/agent/sessions]
        """
        if not value.strip():
            raise usage.UsageError("--import-from: give a directory")
        self.import_from.append(Path(os.path.expanduser(value)).absolute())

    def _tls_endpoint(self, port: str) -> str:
        cert, key = self["tls-cert"], self["tls-key"]
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
        return tls_endpoint(int(port), self["host"], cert, key)

    def _launcher(self) -> dict:
        """The config fields saying how agents are started (see launchers)."""
        sandbox = self["sandbox"]
        if sandbox not in SANDBOX_CHOICES:
            raise usage.UsageError(f"--sandbox {sandbox!r}: choose auto, bwrap or none")
        path = self.environ.get("PATH", os.defpath)
        if self["launcher-command"] is not None:
            if sandbox == "bwrap":
                raise usage.UsageError(
                    "--launcher-command replaces the sandbox: give it or --sandbox bwrap"
                )
            try:
                words = parse_template(self["launcher-command"], path)
            except BadTemplate as e:
                raise usage.UsageError(f"--launcher-command: {e}") from None
            return {"sandbox": "command", "launcher_command": words}
        if sandbox == "none":
            return {"sandbox": "none"}
        bwrap = shutil.which(os.path.expanduser(self["bwrap"]), path=path)
        try:
            if bwrap is None:
                raise BwrapUnusable(f"{self['bwrap']} not found (install bubblewrap)")
            self._check_sandbox(bwrap, self.environ)
        except BwrapUnusable as e:
            if sandbox == "bwrap":
                raise usage.UsageError(f"--sandbox bwrap: {e}") from None
            return {"sandbox": "none", "sandbox_problem": str(e)}
        return {"sandbox": "bwrap", "bwrap": bwrap}

    def _fill_compile_cache(self, cache: Path, pi, env, agent_version) -> Path | None:
        try:
            self._fill_cache(cache, pi, env, agent_version.pi, EXTENSION_PATH, TOOLS_FILE_FLAG)
        except (OSError, subprocess.SubprocessError) as e:
            log.warn(
                "sandboxed agents will start slower: cannot fill {cache}: {error}",
                cache=str(cache),
                error=str(e),
            )
            return None
        return cache

    def postOptions(self):
        environ = self.environ
        port = self["port"] or environ.get("PI_SERVER_PORT") or str(DEFAULT_PORT)
        endpoint = endpoint_description(port, self["host"])
        if self["tls-cert"] or self["tls-key"]:
            endpoint = self._tls_endpoint(port)
        for name in (
            "clone-timeout",
            "github-timeout",
            "journal-max-events",
            "send-buffer-limit",
            "max-agents",
            "agent-idle-timeout",
            "native-tool-timeout",
            "approval-timeout",
            "idempotency-window",
            "agent-probe-interval",
            "requests-per-second",
            "journal-max-bytes",
            "journal-max-age",
        ):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        if self["permission-mode"] not in {str(m) for m in PermissionMode}:
            raise usage.UsageError(
                "--permission-mode must be one of " + ", ".join(str(m) for m in PermissionMode)
            )
        public_url = self["public-url"]
        if public_url is not None:
            if not public_url.startswith(("http://", "https://")) or "?" in public_url:
                raise usage.UsageError(f"--public-url {public_url!r}: give an http(s) URL")
            public_url = public_url.rstrip("/")
        if not 0 <= self["warm-agents"] <= self["max-agents"]:
            raise usage.UsageError("--warm-agents must be between 0 and --max-agents")
        if not 0 <= self["delta-merge-window"] <= 1:
            raise usage.UsageError("--delta-merge-window is 0 to 1 seconds")
        if self["max-frame-size"] < 1024:
            raise usage.UsageError("--max-frame-size must be at least 1024 bytes")
        for name in ("handshake-timeout", "keepalive-interval", "keepalive-timeout"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be a positive number of seconds")
        for name in ("max-connections", "max-pending-per-address"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["log-level"] not in LOG_LEVELS:
            raise usage.UsageError(f"--log-level is one of {', '.join(LOG_LEVELS)}")
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format is one of {', '.join(LOG_FORMATS)}")
        twistd = self.twistd_options()
        if twistd is not None and twistd.get("logfile") == "-" and not twistd.get("nodaemon"):
            raise usage.UsageError("a daemon cannot log to standard output (--logfile -)")

        git_author = None
        if self["git-author"] is not None:
            try:
                git_author = parse_author(self["git-author"])
            except ValueError as e:
                raise usage.UsageError(f"--git-author: {e}") from None

        data_dir = (
            Path(self["data-dir"]).expanduser() if self["data-dir"] else default_data_dir(environ)
        ).absolute()
        try:
            prepare_data_dir(data_dir)
        except OSError as e:
            raise usage.UsageError(
                f"data dir {data_dir} is not usable: {e.strerror or e}"
            ) from None

        pi = find_pi(self["pi"], environ)
        if pi is None:
            raise usage.UsageError(f"the pi agent was not found: {INSTALL_HINT}")

        try:
            dotenv, problems = load_dotenv(data_dir / ".env")
        except OSError as e:
            raise usage.UsageError(f"cannot read {data_dir / '.env'}: {e.strerror or e}") from None
        env = {**environ, **dotenv}
        launcher = self._launcher()
        try:
            agent_version = self._probe_agent(pi, env)
        except UnsupportedAgent as e:
            raise usage.UsageError(str(e)) from None
        if launcher["sandbox"] == "bwrap":
            launcher["compile_cache"] = self._fill_compile_cache(
                data_dir / COMPILE_CACHE, pi, env, agent_version
            )

        if self["no-auth"]:
            token, source = None, "disabled"
        else:
            explicit = self["auth-token"] or environ.get("PI_SERVER_AUTH_TOKEN")
            try:
                if self["auth-token-file"]:
                    if self["auth-token"]:
                        raise usage.UsageError(
                            "--auth-token and --auth-token-file: give one of them"
                        )
                    explicit = read_token_file(Path(self["auth-token-file"]).expanduser())
                token, source = load_or_create_server_token(data_dir, explicit)
            except (OSError, TokenError) as e:
                raise usage.UsageError(f"cannot read or store the server token: {e}") from None

        github_api_url = (
            self["github-api-url"]
            or environ.get("PI_SERVER_GITHUB_API_URL")
            or DEFAULT_GITHUB_API_URL
        ).rstrip("/")
        if not github_api_url.startswith(("http://", "https://")):
            raise usage.UsageError(f"--github-api-url {github_api_url!r}: not an http(s) URL")

        try:
            serverFromString(_reactor(), endpoint)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise usage.UsageError(f"--port {port!r}: {e}") from None
        except (VerifyError, crypto.Error) as e:
            raise usage.UsageError(
                f"--port {port!r}: the TLS certificate or key is not usable: {e}"
            ) from None

        for name in ("daily-budget", "daily-token-budget"):
            if self[name] is not None and not 0 < self[name] < float("inf"):
                raise usage.UsageError(f"--{name} must be positive")
        try:
            budget_timezone = ZoneInfo(self["budget-timezone"])
        except (ValueError, ZoneInfoNotFoundError):
            raise usage.UsageError(
                f"--budget-timezone {self['budget-timezone']!r}: not an IANA time zone"
            ) from None

        self.config = ServerConfig(
            endpoint=endpoint,
            data_dir=data_dir,
            pi_command=pi,
            agent_version=agent_version,
            auth_token=token,
            auth_token_source=source,
            max_frame_size=self["max-frame-size"],
            github_api_url=github_api_url,
            clone_timeout=self["clone-timeout"],
            journal_limits=JournalLimits(
                max_events=self["journal-max-events"],
                max_bytes=self["journal-max-bytes"],
                max_age=self["journal-max-age"],
                # Retention drops whole segments: keep them small beside the limits.
                segment_events=max(1, min(10_000, self["journal-max-events"] // 8)),
                segment_bytes=max(4096, min(4 * 1024 * 1024, self["journal-max-bytes"] // 8)),
            ),
            delta_merge_window=self["delta-merge-window"],
            send_buffer_limit=self["send-buffer-limit"],
            max_agents=self["max-agents"],
            warm_agents=self["warm-agents"],
            agent_idle_timeout=self["agent-idle-timeout"],
            native_tool_timeout=self["native-tool-timeout"],
            permission_mode=self["permission-mode"],
            approval_timeout=self["approval-timeout"],
            public_url=public_url,
            idempotency_window=self["idempotency-window"],
            requests_per_second=self["requests-per-second"],
            github_timeout=self["github-timeout"],
            dotenv_names=frozenset(dotenv),
            env=env,
            dotenv_problems=tuple(problems),
            tls=is_tls_endpoint(endpoint),
            allowed_origins=frozenset(self.allowed_origins),
            handshake_timeout=self["handshake-timeout"],
            keepalive_interval=self["keepalive-interval"],
            keepalive_timeout=self["keepalive-timeout"],
            max_connections=self["max-connections"],
            log_level=LogLevel.levelWithName(self["log-level"]),
            agent_probe_interval=self["agent-probe-interval"],
            max_pending_per_address=self["max-pending-per-address"],
            server_names=frozenset(
                self.server_names
                | ({self["host"]} if self["host"] not in ("0.0.0.0", "::") else set())
            ),
            log_health=not self["no-health-log"],
            metrics_token=self["metrics-token"] or environ.get("PI_SERVER_METRICS_TOKEN") or None,
            notify_urls=tuple(self.notify_urls),
            import_from=tuple(self.import_from) or default_import_from(environ),
            notify_secret=self["notify-secret"] or environ.get("PI_SERVER_NOTIFY_SECRET") or None,
            git_author=git_author,
            daily_budget=self["daily-budget"],
            daily_token_budget=self["daily-token-budget"],
            budget_timezone=budget_timezone,
            **launcher,
        )

    def twistd_options(self):
        """twistd's own options (``--logfile``, ``--nodaemon``...) when twistd parses these
        as its subcommand, else None."""
        return getattr(self, "parent", None)


def _reactor():
    from twisted.internet import reactor

    return reactor


def makeService(options: Options):
    from piserver.ops.logs import twistd_observer
    from piserver.security.redact import install_redaction
    from piserver.service import build_service

    service = build_service(options.config, _reactor())
    # Now, before twistd adds its log observer: the redaction must run before it.
    install_redaction(service, options.config)
    twistd = options.twistd_options()
    if twistd is not None:
        service.log_observer = twistd_observer(twistd, options["log-level"], options["log-format"])
    return service
