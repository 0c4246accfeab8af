"""The /ui resource with fake requests: which paths answer the page or a file, the headers,
compression and the token check (revalidation is in tests/integration/test_webui.py: the
fake request does not do ETags)."""

import gzip
import json
import re

import pytest
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from piserver.security.auth import Authenticator
from piserver.web.site import RootResource
from piserver.web.ui import CONTENT_SECURITY_POLICY, WebUiResource, load_assets

TOKEN = "unit-test-token-value"


@pytest.fixture(scope="module")
def assets():
    return load_assets()


@pytest.fixture
def ui(assets):
    return WebUiResource(Authenticator(TOKEN), assets)


def get(resource, path: str, headers=None):
    # What twisted.web leaves below /ui: "/ui/" is [b""], "/ui" is [].
    request = DummyRequest([segment.encode() for segment in path.split("/")[2:]])
    request.path = request.uri = path.encode()
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    body = resource.render(request)
    request.body = body
    return request


def header(request, name):
    values = request.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


def test_everything_the_page_names_is_package_data(assets):
    page = assets["index.html"].body.decode()
    named = re.findall(r'(?:src|href)="/ui/assets/([^"]+)"', page)
    assert "app.js" in named and "style.css" in named
    assert set(named) <= set(assets)
    # The modules import each other by relative paths.
    for name, asset in assets.items():
        if name.endswith(".js") and not name.startswith("vendor/"):
            for imported in re.findall(r'from "\./([^"]+)"', asset.body.decode()):
                assert imported in assets, (name, imported)


@pytest.mark.parametrize("path", ["/ui/", "/ui/sessions/abc-123"])
def test_the_page_at_ui_and_each_session(ui, path):
    request = get(ui, path)
    assert request.responseCode in (None, 200)
    assert request.body.startswith(b"<!doctype html>")
    assert header(request, b"content-security-policy") == CONTENT_SECURITY_POLICY.encode()
    assert header(request, b"x-content-type-options") == b"nosniff"


def test_ui_without_its_slash_is_moved_into_the_service_workers_scope(ui):
    request = get(ui, "/ui")
    assert (request.responseCode, header(request, b"location")) == (301, b"/ui/")


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/ui/sw.js", b"text/javascript; charset=utf-8"),
        ("/ui/manifest.webmanifest", b"application/manifest+json"),
        ("/ui/assets/icon-192.png", b"image/png"),
    ],
)
def test_the_installable_apps_files(ui, assets, path, content_type):
    request = get(ui, path)
    assert request.responseCode in (None, 200)
    assert header(request, b"content-type") == content_type
    assert header(request, b"content-security-policy") == CONTENT_SECURITY_POLICY.encode()


def test_the_policy_lets_the_app_install_and_nothing_run_inline(assets):
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["worker-src"] == directives["manifest-src"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    manifest = json.loads(assets["manifest.webmanifest"].body)
    assert (manifest["start_url"], manifest["scope"], manifest["display"]) == (
        "/ui/",
        "/ui/",
        "standalone",
    )
    sizes = {icon["sizes"] for icon in manifest["icons"]}
    assert {"192x192", "512x512"} <= sizes
    for icon in manifest["icons"]:
        assert icon["src"].removeprefix("/ui/assets/") in assets


@pytest.mark.parametrize(
    "path",
    [
        "/ui/assets/nope.js",
        "/ui/assets/../webui.py",
        "/ui/assets/vendor/",
        "/ui/assets/",
        "/ui/sessions/",
        "/ui/sessions/a/b",
        "/ui/other",
    ],
)
def test_anything_else_is_a_json_404(ui, path):
    request = get(ui, path)
    assert request.responseCode == 404
    assert b'"not_found"' in request.body
    assert header(request, b"content-security-policy") is not None


def test_files_are_compressed_when_accepted(ui, assets):
    plain = get(ui, "/ui/assets/app.js")
    assert plain.body == assets["app.js"].body
    assert header(plain, b"content-type") == b"text/javascript; charset=utf-8"
    zipped = get(ui, "/ui/assets/app.js", {"accept-encoding": "gzip, br"})
    assert header(zipped, b"content-encoding") == b"gzip"
    assert gzip.decompress(zipped.body) == assets["app.js"].body


def test_auth_answers_whether_the_token_is_right(ui):
    assert get(ui, "/ui/auth", {"authorization": f"Bearer {TOKEN}"}).responseCode in (None, 200)
    wrong = get(ui, "/ui/auth", {"authorization": "Bearer nope-nope-nope"})
    assert wrong.responseCode == 401
    assert TOKEN.encode() not in wrong.body
    assert get(ui, "/ui/auth").responseCode == 401


@pytest.mark.parametrize(
    "accept, redirected",
    [
        ("text/html,application/xhtml+xml,*/*;q=0.8", True),
        ("application/json", False),
        ("*/*", False),
        (None, False),
    ],
)
def test_root_sends_browsers_to_ui(accept, redirected):
    root = RootResource(rpc=Resource(), agent={}, ui=Resource())
    request = DummyRequest([b""])
    if accept:
        request.requestHeaders.setRawHeaders(b"accept", [accept])
    body = root.render(request)
    if redirected:
        assert (request.responseCode, header(request, b"location")) == (302, b"/ui/")
    else:
        assert b'"pi-server"' in body


@pytest.mark.parametrize("method, code", [(b"POST", 405), (b"BREW", 501)])
def test_twisteds_own_error_pages_under_ui_carry_the_csp(ui, method, code):
    """Issue 21 point 14: the 405 and 501 pages twisted.web makes for /ui."""
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    channel = DummyChannel()
    request = Request(channel)
    request.method = method
    request.uri = request.path = b"/ui"
    request.clientproto = b"HTTP/1.1"
    request.prepath, request.postpath = [b"ui"], []
    request.render(ui)
    response = channel.transport.written.getvalue()
    assert response.startswith(f"HTTP/1.1 {code}".encode())
    assert b"Content-Security-Policy: " + CONTENT_SECURITY_POLICY.encode() in response
    assert b"X-Frame-Options: DENY" in response
