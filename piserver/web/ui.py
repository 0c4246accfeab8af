"""
The web client at ``/ui``: its static files (package data in ``piserver/web/``) under
``/ui/assets/``, the page itself at ``/ui`` and ``/ui/sessions/<id>`` (the page routes
itself), the installable app's ``/ui/manifest.webmanifest`` and service worker
``/ui/sw.js`` (scope ``/ui/``), and ``/ui/auth``, which tells the page whether a token
is right: a browser cannot read why a WebSocket upgrade was refused.

Every answer carries a Content-Security-Policy that allows scripts, styles, images and
connections from this origin only and no inline script: what the model, a tool or a
repository produces is shown on the page, and must not run there.
"""

import gzip
import hashlib
from importlib import resources

import attr
from twisted.web.resource import Resource

from piserver.common.httpjson import render_error, render_json
from piserver.security.auth import Unauthorized

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; worker-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; "
    "frame-ancestors 'none'"
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".webmanifest": "application/manifest+json",
}
PAGE = "index.html"
# Served at /ui/<name> rather than under /ui/assets/: a service worker's scope is at most
# its own directory (it must cover /ui/), and the manifest is the app's.
TOP_LEVEL = ("sw.js", "manifest.webmanifest")


@attr.frozen
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: bytes


def load_assets() -> dict[str, Asset]:
    """Every servable file of ``piserver/web`` by its path there (``app.js``,
    ``vendor/marked.esm.js``), compressed once."""
    assets = {}
    root = resources.files("piserver") / "web"

    def walk(directory, prefix):
        for entry in directory.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if suffix not in CONTENT_TYPES:
                continue
            body = entry.read_bytes()
            assets[prefix + entry.name] = Asset(
                body=body,
                gzipped=gzip.compress(body, mtime=0),
                content_type=CONTENT_TYPES[suffix],
                etag=hashlib.sha256(body).hexdigest()[:32].encode("ascii"),
            )

    walk(root, "")
    return assets


def _secure_headers(request) -> None:
    request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii"))
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-frame-options", b"DENY")


def _not_found(request) -> bytes:
    _secure_headers(request)
    path = request.path.decode("utf-8", "replace")
    return render_error(request, 404, "not_found", f"no such path: {path}")


def _serve(request, asset: Asset) -> bytes:
    _secure_headers(request)
    request.setHeader(b"content-type", asset.content_type.encode("ascii"))
    # Revalidated on every load (cheap: 304), so a new version is picked up at once.
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"vary", b"accept-encoding")
    if request.setETag(b'"' + asset.etag + b'"'):
        return b""
    if b"gzip" in (request.getHeader(b"accept-encoding") or b""):
        request.setHeader(b"content-encoding", b"gzip")
        return asset.gzipped
    return asset.body


class WebUiResource(Resource):
    """``/ui`` and everything below it."""

    isLeaf = True

    def __init__(self, authenticator, assets: dict[str, Asset] | None = None):
        super().__init__()
        self._authenticator = authenticator
        self._assets = load_assets() if assets is None else assets

    def render(self, request):
        # Set first: twisted.web's own 405 (POST…) and 501 (unknown method) pages are
        # answers of /ui too, and must carry the same protection as the page.
        _secure_headers(request)
        return super().render(request)

    def render_GET(self, request):
        path = [segment.decode("utf-8", "replace") for segment in request.postpath]
        if path == []:
            # "/ui" is outside the service worker's scope (/ui/): the app lives at /ui/.
            _secure_headers(request)
            request.setResponseCode(301)
            query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
            request.setHeader(b"location", b"/ui/" + (b"?" + query if query else b""))
            return b""
        if path == [""] or (len(path) == 2 and path[0] == "sessions" and path[1]):
            return _serve(request, self._assets[PAGE])
        if len(path) == 1 and path[0] in TOP_LEVEL:
            return _serve(request, self._assets[path[0]])
        if path == ["auth"]:
            return self._check_token(request)
        if len(path) >= 2 and path[0] == "assets" and "" not in path[1:]:
            asset = self._assets.get("/".join(path[1:]))
            if asset is not None:
                return _serve(request, asset)
        return _not_found(request)

    def _check_token(self, request) -> bytes:
        _secure_headers(request)
        headers = {"authorization": (request.getHeader(b"authorization") or b"").decode("latin-1")}
        try:
            self._authenticator.authenticate(headers, {})
        except Unauthorized as e:
            return render_error(request, 401, "unauthorized", e.reason)
        return render_json(request, 200, {"ok": True})
