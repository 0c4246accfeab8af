"""
``--notify-url``: tell someone who is not looking that a run ended, that the agent
waits for an answer (a native tool call, an extension dialog) or that it failed.

Each notification is a small JSON object POSTed to every URL::

    {"event": "run_finished" | "input_needed" | "agent_failed"
               | "budget_warning" | "budget_reached",
     "sessionId": ..., "name": ..., "summary": ..., "time": ...}

An ``input_needed`` of an approval request also has ``approvalId`` and, when the server
has a ``--public-url``, ``actions``: two signed one-time URLs in ntfy's action-button
format (``[{"action": "http", "label": "Allow", "url", "method": "POST", "clear": true},
{... "Deny" ...}]``).

With ``--notify-secret`` the body is signed: ``X-Pi-Server-Signature: sha256=<hex>``
is the HMAC-SHA256 of the exact body bytes under the secret. A ``Title`` header
carries a one-line text for ntfy-style endpoints that show the body as it is.

Delivery never holds anything up: a notification is queued and sent in the
background, each attempt bounded by a timeout, retried with exponential backoff
and dropped after the last try. A URL that fails is logged once, and again only
after it has worked in between.
"""

import hashlib
import hmac
import json
from collections import deque
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import deferLater
from twisted.logger import Logger

from piserver.common.httpbody import read_bounded
from piserver.sessions.observer import InputKind, RunOutcome, SessionObserver

SIGNATURE_HEADER = "X-Pi-Server-Signature"
# Seconds before each try: the first at once, then backing off; dropped after the last.
RETRY_DELAYS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
ATTEMPT_TIMEOUT = 10.0
# Of an endpoint's answer only the status counts: this much of its body is read, no more.
MAX_ANSWER_BYTES = 8 * 1024
# Notifications waiting for one URL; the oldest is dropped beyond this.
MAX_QUEUED = 100
SUMMARY_LENGTH = 200


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def shown_url(url: str) -> str:
    """``url`` as the log shows it: scheme and host only (an ntfy topic or a token in the
    path or query is as good as a password)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_LENGTH else text[: SUMMARY_LENGTH - 1] + "…"


def header_text(text: str) -> str:
    """``text`` as a plain ASCII header value: no control characters, others as ``?``."""
    printable = "".join(c if c.isprintable() else " " for c in text)
    return printable.encode("ascii", "replace").decode("ascii")


class _Target:
    """One URL: its queue and whether its last delivery failed."""

    def __init__(self, url: str):
        self.url = url
        self.queue: deque = deque(maxlen=MAX_QUEUED)
        self.sending = False
        self.failing = False


class Notifying(SessionObserver):
    """What a person who is not looking is told of, and under which name: a run that ended
    (``run_finished``), an agent that failed (``agent_failed``), input needed
    (``input_needed``); the webhooks' ``Notifier`` and Web Push's ``PushNotifier`` send it
    their own way (``notify``)."""

    def notify(self, event: str, session, summary: str) -> None:
        raise NotImplementedError

    def run_ended(self, session, outcome: RunOutcome, summary: str) -> None:
        self.notify("run_finished", session, summary)

    def agent_crashed(self, session, code: int | None, signal: str | None) -> None:
        how = f"signal {signal}" if signal else f"code {code}"
        self.notify("agent_failed", session, f"the agent exited ({how})")

    def input_needed(self, session, kind: InputKind, detail: str) -> None:
        self.notify("input_needed", session, detail)


class Notifier(Service, Notifying):
    """
    ``http`` is a treq ``HTTPClient`` (or anything with its ``post``); ``clock`` an
    IReactorTime; ``redact`` cleans text that may quote a secret (agent errors).
    A session observer (``sessions.observer``).
    """

    name = "notifier"
    log = Logger()

    def __init__(
        self,
        urls,
        http,
        clock,
        secret: str | None = None,
        redact=None,
        retry_delays=RETRY_DELAYS,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        action_urls=None,
    ):
        self._targets = [_Target(url) for url in urls]
        self._http = http
        self._clock = clock
        self._secret = secret
        self._redact = redact or (lambda text: text)
        self._retry_delays = tuple(retry_delays)
        self._attempt_timeout = attempt_timeout
        self._stopped = False
        # action_urls(approval request) -> {"allow": url, "deny": url}, or None: no buttons.
        self._action_urls = action_urls

    # -- what to notify -----------------------------------------------------

    def approval_requested(self, session, request) -> None:
        extra = {"approvalId": request.approval_id}
        if self._action_urls is not None:
            urls = self._action_urls(request)
            extra["actions"] = [
                {
                    "action": "http",
                    "label": label,
                    "url": urls[decision],
                    "method": "POST",
                    "clear": True,
                }
                for decision, label in (("allow", "Allow"), ("deny", "Deny"))
            ]
        self.notify(
            "input_needed",
            session,
            f"the agent asks to run {request.tool_name}: {request.summary}",
            extra,
        )

    def notify(self, event: str, session, summary: str, extra: dict | None = None) -> None:
        """Queue one notification for every URL; returns at once."""
        if self._stopped or not self._targets:
            return
        body = json.dumps(
            {
                "event": event,
                "sessionId": session.id,
                "name": session.name,
                "summary": _short(self._redact(summary)),
                "time": self._clock.seconds(),
                **(extra or {}),
            }
        ).encode("utf-8")
        title = f"pi-server: {event.replace('_', ' ')}" + (
            f" ({session.name})" if session.name else ""
        )
        for target in self._targets:
            target.queue.append((body, _short(self._redact(title))))
            if not target.sending:
                target.sending = True
                self._deliver(target).addErrback(self._delivery_bug, target)

    def stopService(self):
        # Nothing more is sent; what is queued is dropped (the server stops).
        super().stopService()
        self._stopped = True
        for target in self._targets:
            target.queue.clear()

    # -- delivery -----------------------------------------------------------

    def _headers(self, body: bytes, title: str) -> dict:
        headers = {
            "Content-Type": ["application/json"],
            # Header values must be Latin-1: ntfy reads RFC 2047 too, keep it plain.
            # Control characters (CR, LF, ESC…) come out too: the title is a session's
            # name, which any token holder sets.
            "Title": [header_text(title)],
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = [signature(self._secret, body)]
        return headers

    def _deliver(self, target: _Target) -> Deferred:
        return Deferred.fromCoroutine(self._drain(target))

    async def _drain(self, target: _Target) -> None:
        try:
            while target.queue and not self._stopped:
                body, title = target.queue.popleft()
                await self._send_with_retries(target, body, title)
        finally:
            target.sending = False

    async def _send_with_retries(self, target: _Target, body: bytes, title: str) -> None:
        problem = None
        for delay in self._retry_delays:
            if delay:
                await deferLater(self._clock, delay)
            if self._stopped:
                return
            problem = await self._attempt(target, body, title)
            if problem is None:
                if target.failing:
                    target.failing = False
                    self.log.info("notifications to {url} work again", url=shown_url(target.url))
                return
        if not target.failing:
            target.failing = True
            self.log.warn(
                "notification to {url} failed after {tries} tries: {problem} "
                "(further failures are not logged until one succeeds)",
                url=shown_url(target.url),
                tries=len(self._retry_delays),
                problem=problem,
            )

    async def _attempt(self, target: _Target, body: bytes, title: str) -> str | None:
        """None when delivered, else what went wrong."""
        d = Deferred.fromCoroutine(self._post(target.url, body, title))
        d.addTimeout(self._attempt_timeout, self._clock)
        try:
            code = await d
        except TimeoutError:
            return f"no answer within {self._attempt_timeout:g} s"
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None if 200 <= code < 300 else f"HTTP {code}"

    async def _post(self, url: str, body: bytes, title: str) -> int:
        response = await self._http.post(url, data=body, headers=self._headers(body, title))
        # Only the status counts: a bounded amount is read, the rest dropped unread.
        await read_bounded(response, MAX_ANSWER_BYTES)
        return response.code

    def _delivery_bug(self, failure, target: _Target) -> None:
        target.sending = False
        self.log.failure(
            "notification delivery to {url} failed", failure, url=shown_url(target.url)
        )
