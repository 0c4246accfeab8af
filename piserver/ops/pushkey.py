"""``GET /push/key``: the server's VAPID public key, ``{"publicKey": ...}``, in the form
``PushManager.subscribe`` takes as ``applicationServerKey``. It is public: browsers
hand it to their push service."""

import json

from twisted.web.resource import Resource


class PushKeyResource(Resource):
    """Mounted at ``/push``: answers ``/push/key``, a JSON 404 for anything else."""

    isLeaf = True

    def __init__(self, public_key: str):
        super().__init__()
        self._body = json.dumps({"publicKey": public_key}).encode("ascii") + b"\n"

    def render_GET(self, request):
        if request.postpath != [b"key"]:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            return b'{"ok": false, "error": {"code": "not_found", "message": "no such path"}}\n'
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        return self._body
