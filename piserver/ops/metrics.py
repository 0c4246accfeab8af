"""
``GET /metrics``: what the server is doing, in Prometheus' text format
(prometheus_client, on a registry of the server's own).

Counters move where things happen (as a session observer, the event
streams' sends, the method table); gauges (connections, sessions by state,
agents, journal bytes) are read from the live objects at each scrape, so
``/metrics`` costs nothing between scrapes. Labels are bounded: method names of
the method table (anything passed through to pi is ``pass_through``), the stable
error codes, the two event modes, the kinds of refusal (refusals.py), the models of
pi's catalog. Tokens and cost are read from the usage ledger (sessions/usage.py) at
each scrape.
"""

import os

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import maybeDeferred
from twisted.web.resource import Resource

from piserver.common.errors import RpcError
from piserver.security.auth import bearer_token
from piserver.security.tokens import tokens_match
from piserver.sessions.lifecycle import AgentStatus
from piserver.sessions.observer import InputKind, RunOutcome, SessionObserver
from piserver.sessions.stream import EVENT_MODES
from piserver.sessions.usage import UsageLedger

PASS_THROUGH = "pass_through"
# Requests answer in milliseconds; prompts and clones take seconds to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ServerMetrics(SessionObserver):
    """The counters, and a collector of the gauges once ``watch`` is called."""

    def __init__(self, clock, registry: CollectorRegistry | None = None):
        self._clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs_started = Counter(
            "pi_server_runs_started", "agent runs started (prompts)", registry=r
        )
        self.runs_ended = Counter(
            "pi_server_runs_ended", "agent runs ended, by outcome", ["outcome"], registry=r
        )
        # Frames and bytes sent per event mode: counted for every frame, so as plain
        # numbers (a Counter takes a lock for each inc), read at each scrape.
        self._sent = {mode: [0, 0] for mode in EVENT_MODES}
        r.register(_SentCollector(self._sent))
        self.request_seconds = Histogram(
            "pi_server_request_duration_seconds",
            "time to answer a request, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "pi_server_errors", "requests answered with an error, by code", ["code"], registry=r
        )
        self.agent_crashes = Counter(
            "pi_server_agent_crashes", "agents that exited without being asked to", registry=r
        )
        self.agent_restarts = Counter(
            "pi_server_agent_restarts", "agents started again after a crash", registry=r
        )
        self.native_tool_calls = Counter(
            "pi_server_native_tool_calls", "native tool calls the model made", registry=r
        )
        self.native_tool_timeouts = Counter(
            "pi_server_native_tool_timeouts",
            "native tool calls no device answered in time",
            registry=r,
        )
        self.refusals = Counter(
            "pi_server_refusals",
            "upgrades and requests refused, and connections failed for a broken frame "
            "(kind bad_frame), by kind",
            ["kind"],
            registry=r,
        )
        for outcome in ("ok", "error", "aborted"):
            self.runs_ended.labels(outcome)

    # -- counting -----------------------------------------------------------

    def event_sent(self, mode: str, size: int) -> None:
        sent = self._sent[mode]
        sent[0] += 1
        sent[1] += size

    # -- a session observer (sessions.observer) ------------------------------

    def run_started(self, session) -> None:
        self.runs_started.inc()

    def run_ended(self, session, outcome: RunOutcome, summary: str) -> None:
        self.runs_ended.labels(outcome.value).inc()

    def agent_crashed(self, session, code: int | None, signal: str | None) -> None:
        self.agent_crashes.inc()

    def agent_restarted(self, session) -> None:
        self.agent_restarts.inc()

    def input_needed(self, session, kind: InputKind, detail: str) -> None:
        if kind is InputKind.NATIVE_TOOL:
            self.native_tool_calls.inc()

    def native_tool_timed_out(self, session, tool: str) -> None:
        self.native_tool_timeouts.inc()

    def timed_methods(self, table: dict, fallback):
        """The method table and its fallback with each call timed and its errors counted."""
        timed = {name: self._timed(name, handler) for name, handler in table.items()}
        return timed, (self._timed(PASS_THROUGH, fallback) if fallback is not None else None)

    def _timed(self, label: str, handler):
        histogram = self.request_seconds.labels(label)

        def timed(connection, request):
            started = self._clock.seconds()
            d = maybeDeferred(handler, connection, request)

            def done(outcome):
                histogram.observe(self._clock.seconds() - started)
                if not isinstance(outcome, dict) and outcome is not None:
                    failure = outcome
                    if hasattr(failure, "check"):
                        code = failure.value.code if failure.check(RpcError) else "internal_error"
                        self.errors.labels(code).inc()
                return outcome

            return d.addBoth(done)

        return timed

    # -- gauges -------------------------------------------------------------

    def watch(self, hub, sessions) -> None:
        self.registry.register(_LiveCollector(hub, sessions))

    def watch_pending(self, pending) -> None:
        """``pending``: a ``security.admission.PendingConnections`` (its ``len`` and
        ``limit``)."""
        self.registry.register(_PendingCollector(pending))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def open_fds() -> int:
    """File descriptors this process has open (-1 where /proc does not tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def session_state(session) -> str:
    """``stopped``, ``starting``, ``idle`` (agent warm) or ``running`` (in a run)."""
    status = session.status()
    if status == "running":
        return "running" if session.streaming else "idle"
    return status


class _SentCollector:
    def __init__(self, sent: dict):
        self._sent = sent

    def collect(self):
        frames = CounterMetricFamily(
            "pi_server_events_sent", "event frames sent to clients, by event mode", labels=["mode"]
        )
        sent_bytes = CounterMetricFamily(
            "pi_server_event_bytes_sent",
            "bytes of event frames sent to clients, by event mode",
            labels=["mode"],
        )
        for mode, (count, size) in self._sent.items():
            frames.add_metric([mode], count)
            sent_bytes.add_metric([mode], size)
        yield frames
        yield sent_bytes


class _PendingCollector:
    def __init__(self, pending):
        self._pending = pending

    def collect(self):
        yield GaugeMetricFamily(
            "pi_server_pending_connections",
            "connections that have not authenticated (HTTP requests, kept-alive HTTP "
            "connections, upgrades being checked)",
            value=len(self._pending),
        )
        yield GaugeMetricFamily(
            "pi_server_pending_connections_limit",
            "the most connections that may not have authenticated at once (--max-pending)",
            value=self._pending.limit,
        )


class _LiveCollector:
    def __init__(self, hub, sessions):
        self._hub = hub
        self._sessions = sessions

    def collect(self):
        yield GaugeMetricFamily(
            "pi_server_connections", "open WebSocket connections", value=len(self._hub.connections)
        )
        counts = dict.fromkeys(("stopped", "starting", "idle", "running"), 0)
        journal_bytes = 0
        for session in list(self._sessions.sessions.values()):
            counts[session_state(session)] += 1
            stream = getattr(session, "stream", None)
            if stream is not None:
                journal_bytes += stream.journal_bytes
        by_state = GaugeMetricFamily(
            "pi_server_sessions", "sessions by agent state", labels=["state"]
        )
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        agents = GaugeMetricFamily(
            "pi_server_agents",
            "agent processes: running (in a run), warm (a session's, idle or starting) or "
            "spare (started ahead and ready for the next session, --warm-agents)",
            labels=["state"],
        )
        agents.add_metric(["running"], counts["running"])
        agents.add_metric(["warm"], counts["idle"] + counts["starting"])
        pool = getattr(getattr(self._sessions, "agents", None), "warm", None)
        spare = pool.sessions() if pool is not None else []
        agents.add_metric(["spare"], sum(s.lifecycle.status is AgentStatus.RUNNING for s in spare))
        yield agents
        yield GaugeMetricFamily(
            "pi_server_journal_bytes",
            "bytes of event journal on disk, all sessions",
            value=journal_bytes,
        )
        yield GaugeMetricFamily(
            "pi_server_open_fds",
            "file descriptors the server process has open",
            value=open_fds(),
        )


class MetricsResource(Resource):
    """``GET /metrics``; with ``token``, only for ``Authorization: Bearer <token>``."""

    isLeaf = True

    def __init__(self, metrics: ServerMetrics, token: str | None = None):
        super().__init__()
        self._metrics = metrics
        self._token = token

    def render_GET(self, request):
        request.setHeader(b"cache-control", b"no-store")
        if self._token is not None:
            presented = bearer_token(request.getHeader("authorization") or "")
            if presented is None or not tokens_match(presented, self._token):
                request.setResponseCode(401)
                request.setHeader(b"www-authenticate", b'Bearer realm="metrics"')
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return b"send Authorization: Bearer <metrics token>\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self._metrics.exposition()


class UsageCollector:
    """``pi_server_tokens_total{model,kind}`` and ``pi_server_cost_usd_total{model}``,
    read from the ledger at each scrape (so they count from the first recorded message,
    across restarts)."""

    def __init__(self, ledger: UsageLedger):
        self._ledger = ledger

    def collect(self):
        tokens = CounterMetricFamily(
            "pi_server_tokens",
            "tokens the agents used, by model and kind",
            labels=["model", "kind"],
        )
        cost = CounterMetricFamily(
            "pi_server_cost_usd",
            "what the agents cost in USD as pi prices it (models.json cost), by model",
            labels=["model"],
        )
        for model, usage in sorted(self._ledger.model_totals().items()):
            for kind, count in usage.tokens().items():
                tokens.add_metric([model, kind], count)
            cost.add_metric([model], usage.cost_usd)
        yield tokens
        yield cost
