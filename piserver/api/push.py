"""
The Web Push methods: ``push.subscribe {subscription: {endpoint, keys: {p256dh,
auth}}}``, ``push.unsubscribe {endpoint}`` and ``push.list`` (a device sees and removes
its own subscriptions only), and ``session.viewing {sessionId, visible}``, with which a
web client says whether a session is on screen (then nobody is pushed about it).
"""

from piserver.api import params as check
from piserver.common.errors import InvalidParams
from piserver.security.pushsubscriptions import SERVER_OWNER, Subscription, subscription_keys


def owner_of(connection) -> str:
    """Whose subscriptions a connection handles: its device token's, or the server's."""
    return connection.device_token_id or SERVER_OWNER


class PushMethods:
    """``subscriptions`` a ``SubscriptionStore``; ``policy`` an ``EndpointPolicy``;
    ``viewing`` a ``Viewing``; ``sessions`` the ``SessionManager``; ``now()`` the time as
    the data dir's files write it (ISO 8601)."""

    def __init__(self, subscriptions, policy, viewing, sessions, now, prune=None):
        self._subscriptions = subscriptions
        self._policy = policy
        self._viewing = viewing
        self._sessions = sessions
        self._now = now
        self._prune = prune or (lambda: None)

    def table(self) -> dict:
        return {
            "push.subscribe": self.subscribe,
            "push.unsubscribe": self.unsubscribe,
            "push.list": self.list,
            "session.viewing": self.viewing,
        }

    async def subscribe(self, connection, request):
        given = check.obj(request.params, "subscription")
        p256dh, auth = subscription_keys(given.get("keys"))
        endpoint = await self._policy.check(given.get("endpoint"))
        if not connection.open:
            return {}
        dropped = self._subscriptions.add(
            Subscription(
                endpoint=endpoint,
                p256dh=p256dh,
                auth=auth,
                owner=owner_of(connection),
                device=connection.device,
                created_at=self._now(),
            )
        )
        result = {"subscriptions": len(self._subscriptions.of(owner_of(connection)))}
        if dropped:
            result["dropped"] = [s.endpoint for s in dropped]
        return result

    def unsubscribe(self, connection, request):
        endpoint = check.string(request.params, "endpoint")
        return {"removed": self._subscriptions.remove(endpoint, owner=owner_of(connection))}

    def list(self, connection, request):
        self._prune()
        return {"subscriptions": [s.public() for s in self._subscriptions.of(owner_of(connection))]}

    def viewing(self, connection, request):
        session = self._sessions.get(check.target_session_id(request))
        if "visible" not in request.params:
            raise InvalidParams('missing "visible" (true or false)')
        visible = check.boolean(request.params, "visible", False)
        self._viewing.set(connection, session.id, visible)
        return {}
