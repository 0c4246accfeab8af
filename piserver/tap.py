"""
``twistd piserver``: command-line options and the service tree. What the options mean
once checked against the environment and the data dir is ``config.resolve``'s.
"""

import os
from pathlib import Path

from twisted.python import usage

from piserver.agents.launchers.bwrap import check_bwrap
from piserver.agents.launchers.caches import fill as fill_cache
from piserver.agents.nativetools import DEFAULT_CALL_TIMEOUT
from piserver.agents.projecttrust import DEFAULT_PROJECT_TRUST_TIMEOUT
from piserver.agents.protocol import DEFAULT_PROBE_INTERVAL
from piserver.agents.version import probe
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
from piserver.config import resolve
from piserver.ops.logs import DEFAULT_LOG_FORMAT, DEFAULT_LOG_LEVEL, LOG_LEVELS
from piserver.repos.github import DEFAULT_API_URL as DEFAULT_GITHUB_API_URL
from piserver.security.origins import parse_origin
from piserver.sessions import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_AGENTS, DEFAULT_WARM_AGENTS
from piserver.sessions.approvals import DEFAULT_APPROVAL_TIMEOUT
from piserver.wire.connection import DEFAULT_SEND_BUFFER_LIMIT


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
            "project-trust",
            None,
            "ask",
            "whether an agent loads its folder's own pi configuration (.pi/extensions...): "
            "ask (the session's clients; not trusted until a person says yes), always or never",
        ],
        [
            "project-trust-timeout",
            None,
            DEFAULT_PROJECT_TRUST_TIMEOUT,
            "seconds the project trust question stays on offer (unanswered: not trusted)",
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
            "push-ca-file",
            None,
            None,
            "PEM certificate of the only CA trusted for push services' https (a private push "
            "service, or a test stand-in) [default: the system's CAs]",
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
        ["no-push", None, "no Web Push: no VAPID key, no GET /push/key, no push.* methods"],
    ]

    def __init__(
        self, environ=None, probe_agent=probe, check_sandbox=check_bwrap, fill_cache=fill_cache
    ):
        super().__init__()
        self.environ = dict(os.environ if environ is None else environ)
        self.probe_agent = probe_agent
        self.check_sandbox = check_sandbox
        self.fill_cache = fill_cache
        self.allowed_origins = set()
        self.server_names = set()
        self.notify_urls = []
        self.push_allowed_endpoints = []
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

    def opt_push_allow_endpoint(self, value):
        """
        push to subscription endpoints starting with this URL prefix even when they are
        not https or name an internal address (a push service in your own network);
        repeatable
        """
        if not value.startswith(("http://", "https://")) or "://" == value[-3:]:
            raise usage.UsageError(f"--push-allow-endpoint {value!r}: not an http(s) URL prefix")
        self.push_allowed_endpoints.append(value)

    def opt_import_from(self, value):
        """
        a directory of pi session files (pi's sessions dir) that sessions.importable lists
        and session.import copies from; repeatable [default: ~/.pi/agent/sessions]
        """
        if not value.strip():
            raise usage.UsageError("--import-from: give a directory")
        self.import_from.append(Path(os.path.expanduser(value)).absolute())

    def postOptions(self):
        self.config = resolve(self, _reactor())

    def twistd_options(self):
        """twistd's own options (``--logfile``, ``--nodaemon``...) when twistd parses these
        as its subcommand, else None."""
        return getattr(self, "parent", None)


def _reactor():
    # The entry point's reactor: the one twistd installed.
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
