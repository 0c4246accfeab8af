"""
Sending one Web Push message (RFC 8030) to one subscription: the payload encrypted
for the browser (RFC 8291, ``aes128gcm``, with ``http_ece``), the request signed with
the server's VAPID key (RFC 8292, with ``py_vapid``), POSTed with treq with ``TTL`` and
``Urgency`` headers.

Each attempt is bounded by a timeout; a network error, a 429 or a 5xx answer is tried
again after a backoff, a 404 or 410 means the subscription is gone (the caller removes
it), any other answer is final. The push service's answer is read up to
``MAX_ANSWER_BYTES`` only. The endpoint is checked again before sending (a name can
come to resolve to an internal address after it was registered).
"""

import enum
import os
from urllib.parse import urlsplit

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import deferLater
from twisted.logger import Logger

from piserver.common.httpbody import read_bounded
from piserver.ops.notify import ATTEMPT_TIMEOUT, RETRY_DELAYS, shown_url
from piserver.security.vapid import urlsafe_b64decode

MAX_ANSWER_BYTES = 8 * 1024
# A push service takes at most 4096 bytes of encrypted body; this leaves room for the
# record's header (86 bytes), its padding delimiter and tag.
MAX_PAYLOAD_BYTES = 3800
# How long a VAPID JWT is good for (RFC 8292 allows at most 24 hours).
JWT_LIFETIME = 12 * 3600
DEFAULT_SUBJECT = "mailto:pi-server@localhost"


class Delivery(enum.Enum):
    delivered = "delivered"
    # The push service no longer knows the subscription (404/410): remove it.
    gone = "gone"
    failed = "failed"


def encrypt(payload: bytes, p256dh: str, auth: str) -> bytes:
    """``payload`` as an ``aes128gcm`` body for the browser with these keys."""
    sender_key = ec.generate_private_key(ec.SECP256R1())
    return http_ece.encrypt(
        payload,
        salt=os.urandom(16),
        private_key=sender_key,
        dh=urlsafe_b64decode(p256dh),
        auth_secret=urlsafe_b64decode(auth),
        # No keyid: the record header then carries the sender's public key (RFC 8291).
        version="aes128gcm",
    )


def audience(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


class WebPushSender:
    """
    ``http`` is a treq ``HTTPClient``; ``vapid`` a ``py_vapid.Vapid02``; ``policy`` an
    ``EndpointPolicy``; ``subject`` the VAPID ``sub`` claim (a mailto: or https URL the
    push service may contact).
    """

    log = Logger()

    def __init__(
        self,
        http,
        clock,
        vapid,
        policy,
        subject: str = DEFAULT_SUBJECT,
        retry_delays=RETRY_DELAYS,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ):
        self._http = http
        self._clock = clock
        self._vapid = vapid
        self._policy = policy
        self._subject = subject
        self._retry_delays = tuple(retry_delays)
        self._attempt_timeout = attempt_timeout
        self.stopped = False

    def _headers(self, endpoint: str, ttl: int, urgency: str) -> dict:
        claims = {
            "aud": audience(endpoint),
            "sub": self._subject,
            "exp": int(self._clock.seconds()) + JWT_LIFETIME,
        }
        return {
            "Authorization": [self._vapid.sign(claims)["Authorization"]],
            "Content-Encoding": ["aes128gcm"],
            "Content-Type": ["application/octet-stream"],
            "TTL": [str(int(ttl))],
            "Urgency": [urgency],
        }

    async def send(self, subscription, payload: bytes, ttl: int, urgency: str) -> Delivery:
        """Deliver ``payload`` to ``subscription``, retrying; never raises for the push
        service's faults."""
        try:
            await self._policy.check(subscription.endpoint)
        except Exception as e:
            self.log.warn(
                "not pushing to {url}: {problem}",
                url=shown_url(subscription.endpoint),
                problem=getattr(e, "message", str(e)),
            )
            return Delivery.failed
        body = encrypt(payload, subscription.p256dh, subscription.auth)
        problem = None
        for delay in self._retry_delays:
            if delay:
                await deferLater(self._clock, delay)
            if self.stopped:
                return Delivery.failed
            code, problem = await self._attempt(subscription.endpoint, body, ttl, urgency)
            if code is not None and 200 <= code < 300:
                return Delivery.delivered
            if code in (404, 410):
                return Delivery.gone
            if code is not None and code != 429 and code < 500:
                break
        self.log.info(
            "push to {url} failed: {problem}",
            url=shown_url(subscription.endpoint),
            problem=problem,
        )
        return Delivery.failed

    async def _attempt(self, endpoint, body, ttl, urgency) -> tuple[int | None, str | None]:
        d = Deferred.fromCoroutine(self._post(endpoint, body, ttl, urgency))
        d.addTimeout(self._attempt_timeout, self._clock)
        try:
            code = await d
        except TimeoutError:
            return None, f"no answer within {self._attempt_timeout:g} s"
        except Exception as e:
            return None, f"{type(e).__name__}: {e}"
        return code, f"HTTP {code}"

    async def _post(self, endpoint, body, ttl, urgency) -> int:
        response = await self._http.post(
            endpoint, data=body, headers=self._headers(endpoint, ttl, urgency)
        )
        # The status is what counts; the rest of a long answer is not read.
        await read_bounded(response, MAX_ANSWER_BYTES)
        return response.code
