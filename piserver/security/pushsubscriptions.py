"""
The browsers' push subscriptions, each under the device token it was registered with,
in ``<data dir>/push-subscriptions.json`` (mode 0600, replaced atomically)::

    {"version": 1, "subscriptions": [{"endpoint", "p256dh", "auth", "owner",
                                      "device", "createdAt"}, ...]}

``owner`` is the id of the device token (``DeviceTokenStore.identify``) or ``"server"``
for the server token; ``device`` its name, for listing. A device holds at most
``MAX_PER_DEVICE`` subscriptions: registering one more drops its oldest (browsers
renew their endpoints, and a stale one would only be found on its next push).
A subscription whose token is revoked is dropped (``prune``), and so is one whose
push service answers 404 or 410 (``remove``).
"""

import os

import attr
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.logger import Logger

from piserver.common.errors import InvalidParams
from piserver.common.files import CorruptFileError, load_json, write_json_atomic
from piserver.security.vapid import urlsafe_b64decode

PUSH_SUBSCRIPTIONS_FILE = "push-subscriptions.json"
MAX_PER_DEVICE = 10
SERVER_OWNER = "server"
_VERSION = 1
AUTH_SECRET_BYTES = 16


@attr.frozen
class Subscription:
    endpoint: str
    # The browser's P-256 public key (uncompressed point) and auth secret, base64url.
    p256dh: str
    auth: str
    owner: str
    device: str | None = None
    created_at: str | None = None

    def public(self) -> dict:
        """What ``push.list`` shows: never the keys."""
        return {"endpoint": self.endpoint, "device": self.device, "createdAt": self.created_at}


def subscription_keys(keys: object) -> tuple[str, str]:
    """``(p256dh, auth)`` of a ``PushSubscription.toJSON().keys``; raises InvalidParams."""
    if not isinstance(keys, dict):
        raise InvalidParams('missing "subscription.keys" (an object with p256dh and auth)')
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    if not isinstance(p256dh, str) or not isinstance(auth, str):
        raise InvalidParams('"subscription.keys.p256dh" and ".auth" must be strings')
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), urlsafe_b64decode(p256dh))
    except ValueError:
        raise InvalidParams(
            '"subscription.keys.p256dh" must be a P-256 public key (base64url)'
        ) from None
    try:
        secret = urlsafe_b64decode(auth)
    except ValueError:
        secret = b""
    if len(secret) != AUTH_SECRET_BYTES:
        raise InvalidParams(
            f'"subscription.keys.auth" must be {AUTH_SECRET_BYTES} bytes (base64url)'
        )
    return p256dh.strip(), auth.strip()


class SubscriptionStore:
    log = Logger()

    def __init__(self, path: str | os.PathLike, max_per_device: int = MAX_PER_DEVICE):
        self.path = os.fspath(path)
        self._max = max_per_device
        self._subscriptions: list[Subscription] = self._read()

    def _read(self) -> list[Subscription]:
        try:
            document = load_json(self.path, self.log)
        except CorruptFileError:
            return []
        if document is None:
            return []
        found = []
        for record in document.get("subscriptions") or []:
            try:
                found.append(
                    Subscription(
                        endpoint=record["endpoint"],
                        p256dh=record["p256dh"],
                        auth=record["auth"],
                        owner=record["owner"],
                        device=record.get("device"),
                        created_at=record.get("createdAt"),
                    )
                )
            except (KeyError, TypeError):
                continue
        return found

    def _write(self, subscriptions: list[Subscription]) -> None:
        records = [
            {
                "endpoint": s.endpoint,
                "p256dh": s.p256dh,
                "auth": s.auth,
                "owner": s.owner,
                "device": s.device,
                "createdAt": s.created_at,
            }
            for s in subscriptions
        ]
        write_json_atomic(self.path, {"version": _VERSION, "subscriptions": records})
        self._subscriptions = subscriptions

    def all(self) -> list[Subscription]:
        return list(self._subscriptions)

    def of(self, owner: str) -> list[Subscription]:
        return [s for s in self._subscriptions if s.owner == owner]

    def add(self, subscription: Subscription) -> list[Subscription]:
        """Register (or renew) ``subscription``; returns the ones dropped for room."""
        # An endpoint belongs to one browser: registered again, it moves to its new owner.
        others = [s for s in self._subscriptions if s.endpoint != subscription.endpoint]
        mine = [s for s in others if s.owner == subscription.owner]
        dropped = mine[: max(0, len(mine) - self._max + 1)]
        kept = [s for s in others if s not in dropped] + [subscription]
        self._write(kept)
        return dropped

    def remove(self, endpoint: str, owner: str | None = None) -> bool:
        """Remove the subscription of ``endpoint`` (only ``owner``'s, if given)."""
        kept = [
            s
            for s in self._subscriptions
            if not (s.endpoint == endpoint and (owner is None or s.owner == owner))
        ]
        if len(kept) == len(self._subscriptions):
            return False
        self._write(kept)
        return True

    def prune(self, valid_owners: frozenset) -> int:
        """Drop the subscriptions of device tokens not in ``valid_owners``; how many."""
        kept = [
            s for s in self._subscriptions if s.owner == SERVER_OWNER or s.owner in valid_owners
        ]
        gone = len(self._subscriptions) - len(kept)
        if gone:
            self._write(kept)
            self.log.info("removed {count} push subscriptions of revoked device tokens", count=gone)
        return gone
