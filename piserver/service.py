"""
The service tree behind ``twistd piserver``: the HTTP/WebSocket listener and
everything it stands on, wired from a ``ServerConfig``.
"""

import socket
from zoneinfo import ZoneInfo

from autobahn.twisted.resource import WebSocketResource
from treq.client import HTTPClient
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import threads
from twisted.internet.endpoints import serverFromString
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.web.client import Agent, HTTPConnectionPool

from piserver import __version__
from piserver.agents.launchers import Launcher, LocalLauncher
from piserver.agents.launchers.bwrap import BwrapLauncher, install_paths
from piserver.agents.launchers.template import CommandTemplateLauncher
from piserver.agents.models import ModelCatalog
from piserver.agents.supervisor import AgentSupervisor
from piserver.api.handoff import HandoffMethods
from piserver.api.methods import RpcMethods
from piserver.api.push import PushMethods
from piserver.api.usage import UsageMethods
from piserver.api.workspace import WorkspaceMethods
from piserver.config import ServerConfig
from piserver.ops.audit import AUDIT_FILE, AuditLog
from piserver.ops.metrics import MetricsResource, ServerMetrics, UsageCollector
from piserver.ops.notify import ATTEMPT_TIMEOUT, Notifier
from piserver.ops.pushwiring import build_push
from piserver.ops.readiness import ReadyResource
from piserver.ops.signals import SignalsToReactor
from piserver.repos.catalog import RepoCatalog
from piserver.repos.checkouts import Checkouts
from piserver.repos.git import Git
from piserver.repos.github import GithubClient
from piserver.repos.localclone import LocalClones
from piserver.repos.shipping import Shipping
from piserver.repos.snapshot import Snapshots
from piserver.schema import SchemaResource
from piserver.security.access import AccessGuard
from piserver.security.actionurls import ActionSigner, load_or_create_key
from piserver.security.addresses import AddressKeys, TrustedProxies
from piserver.security.admission import PendingConnections
from piserver.security.auth import Authenticator
from piserver.security.redact import (
    REVEAL_FIELD,
    SECRET_NAME_SUFFIXES,
    SERVER_SECRET_ENV,
    Redactor,
    secret_values,
)
from piserver.security.refusals import Refusals
from piserver.security.revocation import RevocationWatcher
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore
from piserver.sessions import SessionManager, SessionSettings
from piserver.sessions.accounting import Accounting
from piserver.sessions.budgets import Budgets, DailyLimits
from piserver.sessions.importable import ImportableSessions
from piserver.sessions.imports import SessionImporter
from piserver.sessions.index import StateStore
from piserver.sessions.session import iso_time
from piserver.sessions.stream import EVENT_MODES
from piserver.sessions.usage import USAGE_FILE, UsageLedger
from piserver.web.actions import ApprovalActionResource
from piserver.web.site import make_site
from piserver.web.ui import WebUiResource
from piserver.wire.hub import Hub
from piserver.wire.idempotency import KEY_LOG, IdempotencyKeys
from piserver.wire.websocket import RpcServerFactory

# The agent runs whatever the model asks: it gets the LLM keys it needs, never the
# server's own token or the GitHub token (git gets that per clone, see git.py).
# GH_TOKEN is the name gh (GitHub's CLI) reads, so a user may have it set too.
AGENT_FORBIDDEN_ENV = SERVER_SECRET_ENV | {"GITHUB_TOKEN", "GH_TOKEN"}


def git_environment(config: ServerConfig) -> dict:
    """
    git runs the repository's hooks: give it the server's environment without any
    secret. The GitHub token reaches a clone through that one process (git.py).
    """
    return {
        name: value
        for name, value in config.env.items()
        if name not in AGENT_FORBIDDEN_ENV
        and name not in config.dotenv_names
        and not name.endswith(SECRET_NAME_SUFFIXES)
    }


class ReportingEndpoint:
    """Wraps a server endpoint to learn the address it actually listens on."""

    def __init__(self, endpoint, on_listening):
        self._endpoint = endpoint
        self._on_listening = on_listening

    def listen(self, factory):
        d = self._endpoint.listen(factory)
        d.addCallback(self._listening)
        return d

    def _listening(self, port):
        self._on_listening(port.getHost())
        return port


class PiServerService(MultiService):
    log = Logger()
    # The observer twistd is to log to (logconfig.py), set by tap.makeService.
    log_observer = None

    def __init__(self, config: ServerConfig):
        super().__init__()
        self.config = config
        self.address = None
        self.hub = None
        self.metrics = None
        self._announced = False

    def setServiceParent(self, parent):
        # twistd adds the service to its Application, then starts logging to the
        # Application's ILogObserver component when it has one.
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def privilegedStartService(self):
        # twistd binds the port here, before startService: announce first.
        self._announce()
        super().privilegedStartService()

    def startService(self):
        self._announce()
        super().startService()

    def _announce(self):
        if self._announced:
            return
        self._announced = True
        config = self.config
        self.log.info(
            "pi-server {version} starting; data dir {data_dir}; agent {pi} "
            "(pi {pi_version} on Node.js {node_version})",
            version=__version__,
            data_dir=str(config.data_dir),
            pi=" ".join(config.pi_command),
            pi_version=config.agent_version.pi,
            node_version=config.agent_version.node or "unknown",
        )
        for problem in config.dotenv_problems:
            self.log.warn(
                "{file}: {problem}", file=str(config.data_dir / ".env"), problem=str(problem)
            )
        if config.sandbox_problem is not None:
            self.log.critical(
                "AGENTS ARE NOT SANDBOXED: {problem}. Every agent runs with this server's "
                "rights and can read its token, other sessions and your files; install "
                "bubblewrap, or give --sandbox none to run without one knowingly",
                problem=config.sandbox_problem,
            )
        else:
            self.log.info("agents run as {launcher}", launcher=describe_launcher(config))
        self.log.info(
            "at most {max_pending} connections that have not authenticated at once{derived}",
            max_pending=config.max_pending,
            derived=(
                f" (half the open-files limit of {config.nofile_limit})"
                if config.nofile_limit is not None
                else ""
            ),
        )
        if config.trusted_proxies:
            self.log.info(
                "trusted reverse proxies, whose {header} header names the client: {proxies}",
                header=str(config.forwarded_header),
                proxies=", ".join(str(n) for n in config.trusted_proxies),
            )
        if config.auth_token is None:
            self.log.critical(
                "AUTHENTICATION IS OFF (--no-auth): anyone who can reach this port can run "
                "shell commands as this user"
            )

    def listening(self, address):
        self.address = address
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
        if port is None:
            self.log.info("listening on {address}", address=str(address))
            return
        shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
        if ":" in shown:
            shown = f"[{shown}]"
        scheme = "wss" if self.config.tls else "ws"
        web = f"{'https' if self.config.tls else 'http'}://{shown}:{port}/ui"
        self.log.info(
            "listening on {host}:{port}; WebSocket at {scheme}://{shown}:{port}/rpc",
            host=host,
            port=port,
            shown=shown,
            scheme=scheme,
        )
        if self.config.auth_token_source == "generated":
            # Shown once, when the token is made, so the user can paste it into a client;
            # the only log line the redaction lets a secret through. The web link carries
            # it in the fragment, which browsers never send to a server.
            self.log.info(
                "new server token stored in {path}; open the web client at {web}#token={token} "
                "or connect with {scheme}://{shown}:{port}/rpc?token={token}",
                path=str(self.config.data_dir / "server-token"),
                shown=shown,
                port=port,
                web=web,
                token=self.config.auth_token,
                scheme=scheme,
                **{REVEAL_FIELD: True},
            )
        elif self.config.auth_token is not None:
            self.log.info(
                "web client at {web}; clients authenticate with the token from {source}",
                web=web,
                source=self.config.auth_token_source,
            )
        else:
            self.log.info("web client at {web}", web=web)


def make_launcher(config: ServerConfig, reactor) -> Launcher:
    if config.sandbox == "bwrap":
        return BwrapLauncher(
            reactor, config.bwrap, install_paths(config.pi_command), cache=config.compile_cache
        )
    if config.sandbox == "command":
        return CommandTemplateLauncher(reactor, config.launcher_command)
    return LocalLauncher(reactor, own_process_group=True)


def describe_launcher(config: ServerConfig) -> str:
    if config.sandbox == "bwrap":
        return f"bubblewrap sandboxes ({config.bwrap})"
    if config.sandbox == "command":
        return f"--launcher-command {' '.join(config.launcher_command)}"
    return "local processes, not sandboxed (--sandbox none)"


def approval_action_urls(config: ServerConfig, reactor, sessions):
    """With ``--public-url``: ``action_urls(request)`` (signed allow/deny URLs for a
    notification) and the resource answering them; else ``(None, None)``."""
    if config.public_url is None:
        return None, None
    signer = ActionSigner(load_or_create_key(config.data_dir), reactor)

    def action_urls(request) -> dict:
        return {
            decision: f"{config.public_url}/approval-action?t="
            + signer.sign(request.approval_id, decision, request.expires)
            for decision in ("allow", "deny")
        }

    def answer(approval_id: str, decision: str) -> bool:
        if decision not in ("allow", "deny"):
            return False
        for session in list(sessions.sessions.values()):
            if approval_id in session.approvals:
                session.approvals.respond("action URL", approval_id, decision, None)
                return True
        return False

    return action_urls, ApprovalActionResource(signer, answer)


def build_service(config: ServerConfig, reactor) -> PiServerService:
    top = PiServerService(config)
    SignalsToReactor(reactor).setServiceParent(top)

    def in_thread(f, *args, **kwargs):
        # Blocking file work (reading a checkout's files) off the reactor thread.
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args, **kwargs)

    launcher = make_launcher(config, reactor)
    supervisor = AgentSupervisor(
        reactor,
        list(config.pi_command),
        str(config.data_dir),
        config.env,
        forbidden_env=AGENT_FORBIDDEN_ENV,
        launcher=launcher,
        probe_interval=config.agent_probe_interval,
    )
    supervisor.setServiceParent(top)
    store = StateStore(config.data_dir / "state.json", reactor)
    models = ModelCatalog(
        reactor, supervisor, config.data_dir / "models-helper", data_dir=config.data_dir
    )
    git = Git(reactor, env=git_environment(config), clone_timeout=config.clone_timeout)
    github = None
    if config.github_token:
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        github = GithubClient(
            http, config.github_api_url, config.github_token, reactor, timeout=config.github_timeout
        )
    repos = RepoCatalog(str(config.data_dir), github, git)

    def publish(session, event_type, payload):
        sessions.publish(session, event_type, payload)

    def confinement(session, writable):
        # The server's git that reads a checkout's working tree runs in the session's
        # sandbox (repos.servergit).
        return launcher.one_shot(sessions.agents.files(session), str(session.cwd), writable)

    snapshots = Snapshots(git, in_thread, publish, confinement)
    clones = LocalClones(git, snapshots.server_git)
    checkouts = Checkouts(git, clones, config.github_token)
    sessions = SessionManager(
        reactor,
        SessionSettings(
            data_dir=config.data_dir,
            journal_limits=config.journal_limits,
            merge_window=config.delta_merge_window,
            max_agents=config.max_agents,
            warm_agents=config.warm_agents,
            idle_timeout=config.agent_idle_timeout,
            native_tool_timeout=config.native_tool_timeout,
            permission_mode=config.permission_mode,
            approval_timeout=config.approval_timeout,
            project_trust=config.project_trust,
            project_trust_timeout=config.project_trust_timeout,
        ),
        supervisor,
        store,
        models,
        checkouts=checkouts,
        on_run_end=snapshots.run_ended,
    )
    sessions.setServiceParent(top)
    shipping = Shipping(
        git,
        snapshots,
        repos,
        github,
        config.github_token,
        publish,
        author=config.git_author,
        push_timeout=config.clone_timeout,
        clones=clones,
    )
    workspace = WorkspaceMethods(sessions, snapshots, shipping, in_thread)
    ledger = UsageLedger(
        config.data_dir / USAGE_FILE, reactor, config.budget_timezone or ZoneInfo("UTC")
    )
    ledger.load()
    accounting = Accounting(ledger)
    budgets = Budgets(ledger, sessions, DailyLimits(config.daily_budget, config.daily_token_budget))
    accounting.on_recorded.append(budgets.recorded)
    sessions.observers.add(budgets)
    sessions.observers.add(accounting)
    importer = SessionImporter(
        reactor,
        config.data_dir,
        sessions,
        ImportableSessions(config.import_from),
        repos,
        git,
        in_thread,
    )
    importer.remove_staged()
    limits = config.journal_limits
    agent = config.agent_version.public()
    methods = RpcMethods(
        sessions=sessions,
        models=models,
        repos=repos,
        agent=agent,
        capabilities={
            "eventModes": list(EVENT_MODES),
            "nativeTools": True,
            "nativeToolTimeoutSec": config.native_tool_timeout,
            "journal": {
                "maxEvents": limits.max_events,
                "maxBytes": limits.max_bytes,
                "maxAgeSec": limits.max_age,
            },
            # The seed's name for how far back a resume reaches.
            "replayWindowSec": int(limits.max_age),
        },
        workspace=workspace,
        usage=UsageMethods(sessions, accounting, budgets),
        handoff=HandoffMethods(importer, sessions),
    )
    redact = Redactor(secret_values(config)).redact
    action_urls, approval_actions = approval_action_urls(config, reactor, sessions)
    if config.notify_urls:
        notifier = Notifier(
            config.notify_urls,
            HTTPClient(
                Agent(
                    reactor,
                    connectTimeout=ATTEMPT_TIMEOUT,
                    pool=HTTPConnectionPool(reactor, persistent=False),
                )
            ),
            reactor,
            secret=config.notify_secret,
            redact=redact,
            action_urls=action_urls,
        )
        notifier.setServiceParent(top)
        sessions.observers.add(notifier)
        budgets.notifiers.append(notifier.notify)
    device_tokens = DeviceTokenStore(config.data_dir / DEVICE_TOKENS_FILE, reactor.seconds)
    method_table = methods.table()
    if config.push:
        push = build_push(config, reactor, device_tokens, redact, in_thread, action_urls)
        push.notifier.setServiceParent(top)
        sessions.observers.add(push.notifier)
        budgets.notifiers.append(push.notifier.notify)
        push_methods = PushMethods(
            push.subscriptions,
            push.policy,
            push.viewing,
            sessions,
            now=lambda: iso_time(reactor.seconds()),
            prune=push.notifier.prune,
        )
        method_table.update(push_methods.table())
    metrics = top.metrics = ServerMetrics(reactor)
    sessions.observers.add(metrics)
    metrics.registry.register(UsageCollector(ledger))
    sessions.on_event_sent = metrics.event_sent
    table, fallback = metrics.timed_methods(method_table, methods.pass_through)
    # Requests that change something run at most once per key, across restarts too.
    keys = IdempotencyKeys(reactor, config.data_dir / KEY_LOG, window=config.idempotency_window)
    hub = top.hub = Hub(
        table,
        fallback=fallback,
        keys=keys,
        # Scopes and reach of each token, and the audit log of what changed (issue 27).
        guard=AccessGuard(sessions, AuditLog(config.data_dir / AUDIT_FILE, reactor.seconds)),
        send_buffer_limit=config.send_buffer_limit,
        clock=reactor,
        requests_per_second=config.requests_per_second,
        redact=redact,
    )
    refusals = Refusals(metrics, reactor)
    proxies = TrustedProxies(config.trusted_proxies, config.forwarded_header)
    # One count of the connections that have not authenticated, for the HTTP site and
    # the WebSocket upgrades alike.
    pending = PendingConnections(config.max_pending, refusals.refused)
    metrics.watch_pending(pending)
    authenticator = Authenticator(config.auth_token, device_tokens)
    factory = RpcServerFactory(
        hub,
        authenticator,
        config.max_frame_size,
        reactor=reactor,
        refusals=refusals,
        allowed_origins=config.allowed_origins,
        max_connections=config.max_connections,
        server_names=config.server_names,
        library_log_level="debug" if config.log_level == LogLevel.debug else "error",
        handshake_timeout=config.handshake_timeout,
        keepalive_interval=config.keepalive_interval,
        keepalive_timeout=config.keepalive_timeout,
        proxies=proxies,
        pending_connections=pending,
    )
    site = make_site(
        WebSocketResource(factory),
        agent,
        reactor=reactor,
        idle_timeout=config.handshake_timeout,
        ui=WebUiResource(authenticator),
        log_health=config.log_health,
        max_pending_per_address=config.max_pending_per_address,
        on_refused=refusals.refused,
        actions=approval_actions,
        address_keys=AddressKeys(config.ipv6_prefix_length),
        proxies=proxies,
        pending_connections=pending,
    )
    metrics.watch(hub, sessions)
    site.resource.putChild(b"metrics", MetricsResource(metrics, config.metrics_token))
    site.resource.putChild(
        b"ready", ReadyResource(config.pi_command, config.data_dir, config.env.get("PATH"))
    )
    site.resource.putChild(b"schema.json", SchemaResource())
    if config.push:
        site.resource.putChild(b"push", push.key_resource)
    if config.auth_token is not None:
        # `pi-server token revoke` from another process closes that device's connections.
        RevocationWatcher(
            device_tokens,
            lambda: list(hub.connections.values()),
            reactor,
            token_file=config.data_dir / DEVICE_TOKENS_FILE,
            reactor=reactor,
            # A revoked token's push subscriptions go at once, not at the next push.
            on_revoked=(lambda valid: push.notifier.prune()) if config.push else None,
        ).setServiceParent(top)
    endpoint = ReportingEndpoint(serverFromString(reactor, config.endpoint), top.listening)
    listener = StreamServerEndpointService(endpoint, site)
    listener.setName("listener")
    listener.setServiceParent(top)
    return top
