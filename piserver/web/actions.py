"""
``POST /approval-action?t=<token>``: answers an approval from a signed action URL
(``security/actionurls.py``) without a device token, e.g. a notification's button.

200 when the token was good and its approval still waited; 403 for anything else (altered,
expired, already answered: nothing changes). Only POST acts: a link preview's GET must not.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from twisted.web.resource import Resource

from piserver.security.actionurls import ActionSigner, RefusedToken

PATH = b"approval-action"


class ApprovalActionResource(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, signer: ActionSigner, answer: Callable[[str, str], bool]):
        """``answer(approval_id, decision)`` is True when it answered a waiting approval."""
        super().__init__()
        self._signer = signer
        self._answer = answer

    def render_POST(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        token = (request.args.get(b"t") or [b""])[0].decode("ascii", "replace")
        try:
            action = self._signer.verify(token)
            answered = self._answer(action.subject, action.action)
        except RefusedToken as e:
            # The token is never logged: a logged URL would be a usable one.
            self.log.info("approval action refused: {why}", why=str(e))
            answered = False
        except Exception:
            self.log.failure("approval action failed")
            request.setResponseCode(500)
            return b"internal error\n"
        if not answered:
            request.setResponseCode(403)
            return b"this action link is no longer valid\n"
        return f"{action.action}: done\n".encode()

    def render_GET(self, request):
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        return b"POST to this link to act\n"
