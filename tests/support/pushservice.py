"""
A Web Push service stand-in on loopback https (a test certificate, see tls.py): it hands
out subscriptions the way a browser's push service and the browser together would (an
endpoint URL, the browser's P-256 key pair and auth secret, made here), and for every
push it receives it checks what a real push service and browser check: the VAPID JWT
(RFC 8292) signed with the server's public key for this origin and not expired, and the
payload decrypted with the subscription's keys (RFC 8291, aes128gcm).

Each endpoint answers 201, or what ``answer(endpoint_id, status)`` sets (410: gone), or
nothing at all (``status=None``: a dead push service).
"""

import base64
import json
import os
import time
from pathlib import Path

import attr
import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.support.tls import write_self_signed

WAIT_TIMEOUT = 30.0


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@attr.frozen
class Push:
    endpoint_id: str
    message: dict
    ttl: str
    urgency: str


class Problem(Exception):
    pass


class PushService(Resource):
    isLeaf = True

    def __init__(self, directory: Path):
        super().__init__()
        self.cert_path, key_path = write_self_signed(directory, "push-service")
        self._key_pem = key_path.read_bytes()
        self.server_key: str | None = None
        self.received: list[Push] = []
        self.problems: list[str] = []
        self.answers: dict[str, int | None] = {}
        self._keys: dict[str, tuple] = {}
        self._waiters: list = []
        self._hanging: list = []
        self._port = None
        self.origin = None

    # -- set-up ---------------------------------------------------------------

    def start(self):
        certificate = ssl.PrivateCertificate.loadPEM(self.cert_path.read_bytes() + self._key_pem)
        self._port = reactor.listenSSL(0, Site(self), certificate.options(), interface="127.0.0.1")
        self.origin = f"https://127.0.0.1:{self._port.getHost().port}"
        return self

    async def stop(self):
        for request in self._hanging:
            request.channel.transport.abortConnection()
        await self._port.stopListening()

    def subscription(self, endpoint_id: str) -> dict:
        """A new subscription, as ``PushSubscription.toJSON()`` gives it."""
        private = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        self._keys[endpoint_id] = (private, auth)
        public = private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": f"{self.origin}/push/{endpoint_id}",
            "keys": {"p256dh": b64encode(public), "auth": b64encode(auth)},
        }

    def answer(self, endpoint_id: str, status: int | None) -> None:
        self.answers[endpoint_id] = status

    # -- receiving ------------------------------------------------------------

    def render_POST(self, request):
        endpoint_id = request.postpath[-1].decode()
        try:
            push = self._check(endpoint_id, request)
        except Problem as e:
            self.problems.append(str(e))
            request.setResponseCode(400)
            return str(e).encode()
        status = self.answers.get(endpoint_id, 201)
        self.received.append(push)
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(push):
                self._waiters.remove(waiter)
                d.callback(push)
        if status is None:
            self._hanging.append(request)
            return NOT_DONE_YET
        request.setResponseCode(status)
        return b""

    def _check(self, endpoint_id: str, request) -> Push:
        if endpoint_id not in self._keys:
            raise Problem(f"no such subscription {endpoint_id}")
        authorization = (request.getHeader(b"authorization") or b"").decode()
        scheme, _, fields = authorization.partition(" ")
        parts = dict(field.strip().split("=", 1) for field in fields.split(","))
        if scheme != "vapid" or parts.get("k") != self.server_key:
            raise Problem("the VAPID key is not the server's")
        header, claims, signature = parts["t"].split(".")
        raw = b64decode(signature)
        public = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b64decode(self.server_key)
        )
        try:
            public.verify(
                encode_dss_signature(
                    int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
                ),
                f"{header}.{claims}".encode(),
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature:
            raise Problem("the VAPID JWT's signature is wrong") from None
        claims = json.loads(b64decode(claims))
        if json.loads(b64decode(header)).get("alg") != "ES256":
            raise Problem("the JWT is not ES256")
        if claims.get("aud") != self.origin:
            raise Problem(f"the JWT's audience is {claims.get('aud')}, not {self.origin}")
        if not time.time() < claims.get("exp", 0) <= time.time() + 24 * 3600:
            raise Problem("the JWT's exp is not within the next 24 hours")
        if request.getHeader(b"content-encoding") != b"aes128gcm":
            raise Problem("the payload is not aes128gcm")
        private, auth = self._keys[endpoint_id]
        try:
            plain = http_ece.decrypt(
                request.content.read(), private_key=private, auth_secret=auth, version="aes128gcm"
            )
        except Exception as e:
            raise Problem(f"the payload does not decrypt: {e}") from None
        return Push(
            endpoint_id,
            json.loads(plain),
            (request.getHeader(b"ttl") or b"").decode(),
            (request.getHeader(b"urgency") or b"").decode(),
        )

    def wait_for(self, predicate) -> Deferred:
        for push in self.received:
            if predicate(push):
                d = Deferred()
                d.callback(push)
                return d
        d = Deferred()
        self._waiters.append((predicate, d))
        return d.addTimeout(WAIT_TIMEOUT, reactor)
