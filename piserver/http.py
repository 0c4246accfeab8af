"""
The HTTP side of the one port: ``/`` (server info, or a redirect to the web client
for browsers), ``/health``, ``/rpc`` (the WebSocket), ``/ui`` (the web client) and
JSON 404s for everything else.
"""

import json

from twisted.web.resource import Resource
from twisted.web.server import Site

from . import __version__
from .config import DEFAULT_HANDSHAKE_TIMEOUT


def _json(request, status: int, body: dict) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


class NotFoundResource(Resource):
    isLeaf = True

    def render(self, request):
        return _json(
            request,
            404,
            {
                "ok": False,
                "error": {
                    "code": "not_found",
                    "message": f"no such path: {request.path.decode('utf-8', 'replace')}",
                },
            },
        )


class HealthResource(Resource):
    isLeaf = True

    def render_GET(self, request):
        return _json(request, 200, {"ok": True, "version": __version__})


def wants_html(request) -> bool:
    """A browser navigating here (it asks for HTML), not a client asking for JSON."""
    accept = (request.getHeader(b"accept") or b"").lower()
    return b"text/html" in accept and b"application/json" not in accept


class RootResource(Resource):
    """``/`` itself answers server info (browsers are sent to ``/ui``); its children are
    ``health``, ``rpc`` and ``ui``."""

    def __init__(self, rpc: Resource, agent: dict, ui: Resource | None = None):
        super().__init__()
        self._agent = agent
        self.putChild(b"health", HealthResource())
        self.putChild(b"rpc", rpc)
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
            request.setHeader(b"location", b"/ui")
            request.setHeader(b"cache-control", b"no-store")
            return b""
        return _json(
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


class PiSite(Site):
    """A ``Site`` whose access log can leave out the health probes (``--no-health-log``):
    a load balancer asking every few seconds would fill it."""

    log_health = True

    def log(self, request):
        if not self.log_health and request.path == b"/health":
            return
        super().log(request)


def make_site(
    rpc: Resource,
    agent: dict,
    reactor=None,
    idle_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ui: Resource | None = None,
    log_health: bool = True,
) -> Site:
    """
    ``agent`` describes the pi agent for ``GET /``; ``ui`` is the web client, served at
    ``/ui`` (none without it). ``idle_timeout`` closes HTTP connections silent that long;
    it is what bounds a client that connects and never completes its WebSocket upgrade
    request.
    """
    site = PiSite(
        RootResource(rpc, agent, ui),
        logFormatter=redacted_log_formatter,
        reactor=reactor,
        timeout=idle_timeout,
    )
    site.log_health = log_health
    # A traceback page would show internals to whoever asks.
    site.displayTracebacks = False
    return site
