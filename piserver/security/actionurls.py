"""
Signed one-time action URLs: a link that answers one thing (an approval's ``allow`` or
``deny``) without a device token, for a notification's buttons.

A token is ``<payload>.<mac>``, both unpadded base64url: the payload is
``<subject>\\n<action>\\n<expiry seconds>`` and the mac its HMAC-SHA256 under a 256-bit key
kept in the data dir (``approval-url.key``, 0600, made on first use). :meth:`verify` refuses
an altered token, another key's, or an expired one; "one use" is the caller's: the thing a
token answers can be answered once. Tokens travel in a URL's query string, which the access
log leaves out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

import attr

from piserver.common.files import loose_mode, write_bytes_atomic

KEY_FILE = "approval-url.key"
KEY_BYTES = 32


class RefusedToken(Exception):
    """A token that is malformed, altered, signed by another key or expired."""


@attr.frozen
class Action:
    subject: str
    action: str
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ActionSigner:
    """Signs and verifies action tokens with ``key``; ``clock`` gives the time."""

    def __init__(self, key: bytes, clock):
        if len(key) < KEY_BYTES:
            raise ValueError("the action URL key is too short")
        self._key = key
        self._clock = clock

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def sign(self, subject: str, action: str, expires: float) -> str:
        if "\n" in subject or "\n" in action:
            raise ValueError("subject and action are single lines")
        payload = f"{subject}\n{action}\n{int(expires)}".encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str) -> Action:
        """The action ``token`` stands for; raises :class:`RefusedToken`."""
        try:
            encoded_payload, encoded_mac = token.split(".")
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except (ValueError, binascii.Error):
            raise RefusedToken("malformed") from None
        # base64 has spare bits: another spelling of the same bytes is an altered token too.
        if _b64(payload) != encoded_payload or _b64(mac) != encoded_mac:
            raise RefusedToken("malformed")
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise RefusedToken("bad signature")
        try:
            subject, action, expires = payload.decode("utf-8").split("\n")
            when = int(expires)
        except ValueError:
            raise RefusedToken("malformed") from None
        if self._clock.seconds() >= when:
            raise RefusedToken("expired")
        return Action(subject=subject, action=action, expires=when)


def load_or_create_key(data_dir: str | os.PathLike) -> bytes:
    """The data dir's action URL key, made (0600, atomically) if there is none."""
    path = Path(data_dir) / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    if len(key) >= KEY_BYTES and loose_mode(path) is None:
        return key
    key = secrets.token_bytes(KEY_BYTES)
    write_bytes_atomic(path, key)
    return key
