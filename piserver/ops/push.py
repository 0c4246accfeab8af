"""
Web Push to the devices that asked for it ("Notify me on this device" in the web
client): the same happenings as the ``--notify-url`` webhooks (``input_needed``,
``run_finished`` with the first line of the answer, ``agent_failed``, and the budgets'
``budget_warning`` and ``budget_reached``), as a small JSON
payload for the service worker (``piserver/web/sw.js``)::

    {"event", "title", "body", "sessionId", "url": "/ui/sessions/<id>",
     "actions": [{"action": "allow" | "deny", "title", "url"}]}   # approvals only

An approval's actions are the approvals' signed one-time URLs (``--public-url``): the
service worker POSTs one and the call is answered from the lock screen. Only devices whose
token may approve (scope ``approve``) get them; the others get the notification alone.

Nobody is pushed about a session that is visible on some web client
(``session.viewing``), and a device only about sessions its token may read (its scopes
and reach). Subscriptions of revoked device tokens are dropped before each push, those
the push service no longer knows (404/410) after it. Sending happens in the background
and is bounded: nothing waits for a push service.
"""

import json

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from piserver.ops.notify import Notifying, _short
from piserver.ops.webpush import MAX_PAYLOAD_BYTES, Delivery
from piserver.security.pushsubscriptions import SERVER_OWNER
from piserver.security.scopes import Scope

# Pushes in flight at once; beyond, new ones are dropped (and logged) until some end.
MAX_IN_FLIGHT = 200
TITLES = {
    "input_needed": "waits for your answer",
    "run_finished": "finished",
    "agent_failed": "the agent failed",
    "budget_warning": "80 % of a budget spent",
    "budget_reached": "stopped: budget spent",
}
# How long a push service keeps trying to deliver (seconds) and how urgently.
TTL = {
    "input_needed": 3600,
    "run_finished": 86400,
    "agent_failed": 86400,
    "budget_warning": 86400,
    "budget_reached": 86400,
}
URGENCY = {
    "input_needed": "high",
    "run_finished": "normal",
    "agent_failed": "normal",
    "budget_warning": "normal",
    "budget_reached": "high",
}


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class PushNotifier(Service, Notifying):
    """
    ``subscriptions`` a ``SubscriptionStore``; ``sender`` a ``WebPushSender``;
    ``viewing`` a ``sessions.viewing.Viewing``; ``grants()`` what each device token valid
    now may do, by token id (``DeviceTokenStore.grants``; None: no device tokens);
    ``redact`` cleans text that may quote a secret. A session observer.
    """

    name = "push"
    log = Logger()

    def __init__(self, subscriptions, sender, viewing, grants=None, redact=None, action_urls=None):
        self._subscriptions = subscriptions
        self._sender = sender
        self._viewing = viewing
        self._grants = grants or dict
        self._redact = redact or (lambda text: text)
        # action_urls(approval request) -> {"allow": url, "deny": url}; None: no actions.
        self._action_urls = action_urls
        self._in_flight = 0
        self._stopped = False
        self.sent: list[Deferred] = []

    def stopService(self):
        super().stopService()
        self._stopped = True
        self._sender.stopped = True

    # -- what is pushed --------------------------------------------------------

    def approval_requested(self, session, request) -> None:
        actions = None
        if self._action_urls is not None:
            urls = self._action_urls(request)
            actions = [
                {"action": decision, "title": title, "url": urls[decision]}
                for decision, title in (("allow", "Allow"), ("deny", "Deny"))
            ]
        self.notify(
            "input_needed",
            session,
            f"the agent asks to run {request.tool_name}: {request.summary}",
            actions,
        )

    def prune(self) -> dict:
        """Drop the subscriptions of revoked device tokens; the valid tokens' grants."""
        grants = self._grants()
        self._subscriptions.prune(frozenset(grants))
        return grants

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
        grants = self.prune()
        audience = []
        for subscription in self._subscriptions.all():
            grant = None if subscription.owner == SERVER_OWNER else grants.get(subscription.owner)
            if grant is None and subscription.owner != SERVER_OWNER:
                continue
            if grant is not None and not (Scope.READ in grant.scopes and grant.may_see(session)):
                continue
            # A signed action URL answers an approval: only for tokens that may approve.
            may_act = grant is None or Scope.APPROVE in grant.scopes
            audience.append((subscription, may_act))
        if not audience:
            return
        with_actions = self.payload(event, session, summary, actions)
        without = self.payload(event, session, summary) if actions else with_actions
        for subscription, may_act in audience:
            if self._in_flight >= MAX_IN_FLIGHT:
                self.log.warn("too many pushes in flight: {event} not pushed", event=event)
                return
            self._in_flight += 1
            data = with_actions if may_act else without
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
