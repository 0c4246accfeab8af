"""
The JSON answers of the HTTP side (``/``, ``/health``, ``/ready``, ``/ui/auth``, 404s,
refusals), one shape for all: ``{"ok": false, "error": {"code", "message"}}`` for an
error, as on the WebSocket; never cached.
"""

import json


def json_body(body: dict) -> bytes:
    return json.dumps(body).encode("utf-8") + b"\n"


def error_body(code: str, message: str) -> bytes:
    return json_body({"ok": False, "error": {"code": code, "message": message}})


def render_json(request, status: int, body: dict) -> bytes:
    """Set ``request``'s status and headers for ``body``; return the bytes to send."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json_body(body)


def render_error(request, status: int, code: str, message: str) -> bytes:
    return render_json(request, status, {"ok": False, "error": {"code": code, "message": message}})
