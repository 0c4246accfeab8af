"""
Web Push to the devices that asked for it ("Notify me on this device" in the web
client): the same happenings as the ``--notify-url`` webhooks (``input_needed``,
``run_finished`` with the first line of the answer, ``agent_failed``), as a small JSON
payload for the service worker (``piserver/web/sw.js``)::

    {"event", "title", "body", "sessionId", "url": "/ui/sessions/<id>",
     "actions": [{"action": "allow" | "deny", "title", "url"}]}   # approvals only

Nobody is pushed about a session that is visible on some web client
(``session.viewing``). Subscriptions of revoked device tokens are dropped before each
push, those the push service no longer knows (404/410) after it. Sending happens in
the background and is bounded: nothing waits for a push service.
"""

import json

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from piserver.ops.notify import NotificationSelection, _short
from piserver.ops.webpush import MAX_PAYLOAD_BYTES, Delivery

# Pushes in flight at once; beyond, new ones are dropped (and logged) until some end.
MAX_IN_FLIGHT = 200
TITLES = {
    "input_needed": "waits for your answer",
    "run_finished": "finished",
    "agent_failed": "the agent failed",
}
# How long a push service keeps trying to deliver (seconds) and how urgently.
TTL = {"input_needed": 3600, "run_finished": 86400, "agent_failed": 86400}
URGENCY = {"input_needed": "high", "run_finished": "normal", "agent_failed": "normal"}


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class PushNotifier(NotificationSelection, Service):
    """
    ``subscriptions`` a ``SubscriptionStore``; ``sender`` a ``WebPushSender``;
    ``viewing`` a ``sessions.viewing.Viewing``; ``valid_owners()`` the ids of the device
    tokens valid now (None: no device tokens); ``redact`` cleans text that may quote a
    secret.
    """

    name = "push"
    log = Logger()

    def __init__(self, subscriptions, sender, viewing, valid_owners=None, redact=None):
        self._subscriptions = subscriptions
        self._sender = sender
        self._viewing = viewing
        self._valid_owners = valid_owners
        self._redact = redact or (lambda text: text)
        self._last_text: dict[str, str] = {}
        self._in_flight = 0
        self._stopped = False
        self.sent: list[Deferred] = []

    def stopService(self):
        super().stopService()
        self._stopped = True
        self._sender.stopped = True

    def prune(self) -> None:
        """Drop the subscriptions of revoked device tokens."""
        if self._valid_owners is not None:
            self._subscriptions.prune(self._valid_owners())

    def payload(self, event: str, session, summary: str, actions=None) -> bytes:
        name = session.name or "pi"
        body = first_line(summary) if event == "run_finished" else summary
        message = {
            "event": event,
            "title": _short(self._redact(f"{name}: {TITLES[event]}")),
            "body": _short(self._redact(body)),
            "sessionId": session.id,
            "url": f"/ui/sessions/{session.id}",
        }
        if actions:
            message["actions"] = actions
        data = json.dumps(message, ensure_ascii=False).encode("utf-8")
        if len(data) > MAX_PAYLOAD_BYTES:
            message["body"] = message["body"][:100]
            data = json.dumps(message, ensure_ascii=False).encode("utf-8")
        return data

    def notify(self, event: str, session, summary: str, actions=None) -> None:
        """Push ``event`` to every subscription unless the session is being looked at;
        returns at once."""
        if self._stopped:
            return
        if self._viewing.is_visible(session.id):
            self.log.debug(
                "no push for {event} of {session_id}: it is on screen",
                event=event,
                session_id=session.id,
            )
            return
        self.prune()
        subscriptions = self._subscriptions.all()
        if not subscriptions:
            return
        data = self.payload(event, session, summary, actions)
        for subscription in subscriptions:
            if self._in_flight >= MAX_IN_FLIGHT:
                self.log.warn("too many pushes in flight: {event} not pushed", event=event)
                return
            self._in_flight += 1
            d = Deferred.fromCoroutine(self._push(subscription, data, event))
            d.addErrback(lambda failure: self.log.failure("push failed", failure))
            self.sent.append(d)
            d.addBoth(lambda _, d=d: self.sent.remove(d))

    async def _push(self, subscription, data: bytes, event: str) -> None:
        try:
            delivery = await self._sender.send(subscription, data, TTL[event], URGENCY[event])
        finally:
            self._in_flight -= 1
        if delivery is Delivery.gone:
            self._subscriptions.remove(subscription.endpoint)
            self.log.info(
                "removed a push subscription of {device}: its push service no longer knows it",
                device=subscription.device or "the server token",
            )
