"""
The HTTP side of the one port: ``/`` (server info, or a redirect to the web client
for browsers), ``/health``, ``/rpc`` (the WebSocket), ``/ui`` (the web client) and
JSON 404s for everything else.

Before a client has authenticated it can only send a request head, and what it
may hold that way is bounded: each request (head and body) must arrive within
the handshake timeout however slowly it trickles in, heads are at most
``MAX_HEAD_BYTES``, bodies at most ``MAX_BODY_BYTES`` (refused with 413 from
their declared length, before a byte of them is read: no endpoint takes one),
and one source address may have at most ``max_pending_per_address``
connections whose request is still arriving (a trusted reverse proxy excepted: it is
many clients). All connections that have not authenticated together are capped
(``security.admission``: refused, or the heaviest address's oldest closed, at once).

Behind a trusted reverse proxy (``security.addresses.TrustedProxies``) a request's
client address (``Request.getClientAddress``, the access log) is the one the proxy
forwards.
"""

import collections
import json

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from piserver import __version__
from piserver.common.defaults import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_PENDING_PER_ADDRESS
from piserver.common.httpjson import error_body, render_error, render_json
from piserver.security.addresses import AddressKeys, TrustedProxies
from piserver.security.admission import PendingConnections

# Without a cap given (tests of other things), as good as none.
UNCAPPED = 1 << 62

# The request line and all headers of one request; a browser's upgrade is under 2 kB.
MAX_HEAD_BYTES = 16 * 1024
# No endpoint takes a body: a few kB for clients that send an empty form or the like.
MAX_BODY_BYTES = 4 * 1024


class NotFoundResource(Resource):
    isLeaf = True

    def render(self, request):
        path = request.path.decode("utf-8", "replace")
        return render_error(request, 404, "not_found", f"no such path: {path}")


class RpcResource(Resource):
    """``/rpc``: the WebSocket upgrade, or a JSON error for a request that is not one."""

    isLeaf = True

    def __init__(self, websocket: Resource):
        super().__init__()
        self._websocket = websocket

    def render(self, request):
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket":
            request.setHeader(b"upgrade", b"websocket")
            return render_error(
                request,
                426,
                "upgrade_required",
                "/rpc is a WebSocket endpoint: open it with a WebSocket upgrade request",
            )
        return self._websocket.render(request)


class HealthResource(Resource):
    isLeaf = True

    def render_GET(self, request):
        return render_json(request, 200, {"ok": True, "version": __version__})


def wants_html(request) -> bool:
    """A browser navigating here (it asks for HTML), not a client asking for JSON."""
    accept = (request.getHeader(b"accept") or b"").lower()
    return b"text/html" in accept and b"application/json" not in accept


class RootResource(Resource):
    """``/`` itself answers server info (browsers are sent to ``/ui``); its children are
    ``health``, ``rpc`` and ``ui``."""

    def __init__(
        self,
        rpc: Resource,
        agent: dict,
        ui: Resource | None = None,
        actions: Resource | None = None,
    ):
        super().__init__()
        if actions is not None:
            # Signed approval action URLs (web/actions.py): no device token.
            self.putChild(b"approval-action", actions)
        self._agent = agent
        self.putChild(b"health", HealthResource())
        self.putChild(b"rpc", RpcResource(rpc))
        self._ui = ui
        if ui is not None:
            self.putChild(b"ui", ui)

    def getChild(self, path, request):
        if path == b"":
            return self
        return NotFoundResource()

    def render_GET(self, request):
        if request.postpath and request.postpath != [b""]:
            return NotFoundResource().render(request)
        if self._ui is not None and wants_html(request):
            request.setResponseCode(302)
            request.setHeader(b"location", b"/ui/")
            request.setHeader(b"cache-control", b"no-store")
            return b""
        return render_json(
            request,
            200,
            {
                "name": "pi-server",
                "version": __version__,
                "endpoints": {"websocket": "/rpc", "health": "/health"},
                "agent": self._agent,
            },
        )


def redacted_log_formatter(timestamp, request):
    """
    Access log line in the combined format, without the query string: clients
    may carry their token in ``?token=``.
    """
    path = request.uri.split(b"?", 1)[0]
    referrer = (request.getHeader(b"referer") or b"-").split(b"?", 1)[0]
    agent = request.getHeader(b"user-agent") or b"-"
    address = request.getClientAddress()
    line = '"{ip}" - - {ts} "{method} {path} {proto}" {code} {length} "{ref}" "{agent}"'.format(
        ip=getattr(address, "host", "-"),
        ts=timestamp,
        method=_safe(request.method),
        path=_safe(path),
        proto=_safe(request.clientproto),
        code=request.code,
        length=request.sentLength or "-",
        ref=_safe(referrer),
        agent=_safe(agent),
    )
    return line


def _safe(value: bytes) -> str:
    # Escapes quotes and control characters so a client cannot forge log lines.
    return json.dumps(value.decode("latin-1"))[1:-1]


class ProxiedRequest(Request):
    """A request whose client address is the one a trusted proxy forwards."""

    _client_address = None

    def getClientAddress(self):
        if self._client_address is None:
            self._client_address = self._forwarded(super().getClientAddress())
        return self._client_address

    def _forwarded(self, address):
        proxies = getattr(self.site or getattr(self.channel, "site", None), "proxies", None)
        host = getattr(address, "host", None)
        if proxies is None or not proxies.trusts(host):
            return address
        name = str(proxies.header).encode()
        values = [v.decode("latin-1") for v in self.requestHeaders.getRawHeaders(name, [])]
        client = proxies.client(host, values)
        if client == host:
            return address
        return (IPv6Address if ":" in client else IPv4Address)("TCP", client, 0)


class PiSite(Site):
    """A ``Site`` whose access log can leave out the health probes (``--no-health-log``):
    a load balancer asking every few seconds would fill it."""

    log_health = True

    def log(self, request):
        if not self.log_health and request.path == b"/health":
            return
        super().log(request)


class GuardedChannel(HTTPChannel):
    """An HTTP channel whose requests are bounded in time and size (see the module)."""

    totalHeadersSize = MAX_HEAD_BYTES
    MAX_LENGTH = MAX_HEAD_BYTES
    _deadline = None
    _pending_key = None

    def connectionMade(self):
        super().connectionMade()
        host = getattr(self.transport.getPeer(), "host", None)
        key = self.site.address_keys.key(host)
        if not self.site.pending_connections.admit(self.transport, key):
            # Closed at once, nothing read or written: the cheapest refusal there is.
            self.dataReceived = lambda data: None
            self.transport.abortConnection()
            return
        # A trusted proxy is many clients at once: its own limits bound each of them.
        if not self.site.request_started(key, refuse=not self.site.proxies.trusts(host)):
            message = (
                "too many connections from this address are still sending their "
                "request; try again later"
            )
            self.site.refused("too_many_pending", key, message)
            self._refuse(503, "too_many_connections", message)
            return
        self._pending_key = key
        self._start_deadline()

    def _start_deadline(self):
        self._deadline = self.callLater(self.site.request_timeout, self._too_slow)

    def _too_slow(self):
        self._deadline = None
        self.site.refused(
            "request_timeout",
            self._pending_key,
            f"the request took longer than {self.site.request_timeout:g} s",
        )
        self.transport.abortConnection()

    def _request_arrived(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._pending_key is not None:
            self.site.request_finished(self._pending_key)
            self._pending_key = None

    def headerReceived(self, line):
        if not super().headerReceived(line):
            return False
        # A chunked body (length None) has no size before it is read: refused too.
        if self.length is None or self.length > MAX_BODY_BYTES:
            message = f"request bodies are limited to {MAX_BODY_BYTES} bytes"
            self.site.refused("body_too_large", self._peer_key(), message)
            self._refuse(413, "body_too_large", message)
            return False
        return True

    def allContentReceived(self):
        self._request_arrived()
        super().allContentReceived()

    def dataReceived(self, data):
        if data and self._pending_key is None and self.transport is not None:
            # The first bytes of another request on a kept-alive connection: it is bounded
            # like the first (between requests only the idle timeout applies).
            self._pending_key = self._peer_key()
            self.site.request_started(self._pending_key, refuse=False)
            self._start_deadline()
        super().dataReceived(data)

    def _peer_key(self) -> str:
        return self.site.address_keys.key(getattr(self.transport.getPeer(), "host", None))

    def connectionLost(self, reason):
        self._request_arrived()
        if self.transport is not None:
            self.site.pending_connections.release(self.transport)
        super().connectionLost(reason)

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._request_arrived()
        # Whatever else the client sends is not looked at.
        self.dataReceived = lambda data: None
        body = error_body(code, message)
        reason = {413: b"Content Too Large", 503: b"Service Unavailable"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.loseConnection()


class GuardedSite(PiSite):
    """A Site of ``GuardedChannel``s, counting per source address (``address_keys``) the
    connections whose request is still arriving, and all that have not authenticated
    (``pending_connections``, an ``admission.PendingConnections``; None: no cap).
    ``on_refused(kind, address, message)`` hears of each refusal."""

    protocol = GuardedChannel
    requestFactory = ProxiedRequest

    def __init__(
        self,
        resource,
        *,
        request_timeout: float,
        max_pending_per_address: int,
        on_refused=None,
        address_keys: AddressKeys | None = None,
        proxies: TrustedProxies | None = None,
        pending_connections=None,
        **kwargs,
    ):
        super().__init__(resource, **kwargs)
        self.address_keys = AddressKeys() if address_keys is None else address_keys
        self.proxies = TrustedProxies() if proxies is None else proxies
        if pending_connections is None:
            pending_connections = PendingConnections(UNCAPPED, on_refused)
        self.pending_connections = pending_connections
        self.request_timeout = request_timeout
        self.max_pending_per_address = max_pending_per_address
        self._on_refused = on_refused
        self.pending = collections.Counter()

    def request_started(self, key: str, refuse: bool = True) -> bool:
        if refuse and self.pending[key] >= self.max_pending_per_address:
            return False
        self.pending[key] += 1
        return True

    def request_finished(self, key: str) -> None:
        self.pending[key] -= 1
        if self.pending[key] <= 0:
            del self.pending[key]

    def refused(self, kind: str, key: str | None, message: str) -> None:
        if self._on_refused is not None:
            self._on_refused(kind, key or "-", message)


def make_site(
    rpc: Resource,
    agent: dict,
    reactor=None,
    idle_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ui: Resource | None = None,
    log_health: bool = True,
    max_pending_per_address: int = DEFAULT_MAX_PENDING_PER_ADDRESS,
    on_refused=None,
    actions: Resource | None = None,
    address_keys: AddressKeys | None = None,
    proxies: TrustedProxies | None = None,
    pending_connections=None,
) -> Site:
    """
    ``agent`` describes the pi agent for ``GET /``; ``ui`` is the web client, served at
    ``/ui`` (none without it). ``idle_timeout`` closes HTTP connections silent that long
    and bounds each request, head and body, in total (see ``GuardedChannel``).
    """
    site = GuardedSite(
        RootResource(rpc, agent, ui, actions),
        logFormatter=redacted_log_formatter,
        reactor=reactor,
        timeout=idle_timeout,
        request_timeout=idle_timeout,
        max_pending_per_address=max_pending_per_address,
        on_refused=on_refused,
        address_keys=address_keys,
        proxies=proxies,
        pending_connections=pending_connections,
    )
    site.log_health = log_health
    # A traceback page would show internals to whoever asks.
    site.displayTracebacks = False
    return site
