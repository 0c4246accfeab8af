"""
The server's VAPID key pair (RFC 8292): push services accept a push only when it is
signed with the private key whose public key the browser subscribed with.

The pair is made on first start and kept in ``<data dir>/vapid-private-key.pem``, mode
0600 like the server token; a file that group or others can read is used, with a
warning. The public key is served as ``GET /push/key`` in the form
``PushManager.subscribe`` takes as ``applicationServerKey``: the uncompressed P-256
point, URL-safe base64 without padding.
"""

import base64
import os

from cryptography.hazmat.primitives import serialization
from py_vapid import Vapid02
from twisted.logger import Logger

from piserver.common.files import loose_mode, write_bytes_atomic

VAPID_KEY_FILE = "vapid-private-key.pem"

_log = Logger()


def urlsafe_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def urlsafe_b64decode(text: str) -> bytes:
    """Base64url with or without padding (browsers send it without); raises ValueError."""
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_vapid(data_dir: str | os.PathLike, log: Logger | None = None) -> Vapid02:
    """The key pair in ``data_dir``, made and stored (0600) if there is none."""
    log = log or _log
    path = os.path.join(os.fspath(data_dir), VAPID_KEY_FILE)
    try:
        with open(path, "rb") as key_file:
            mode = loose_mode(key_file.fileno())
            pem = key_file.read()
    except FileNotFoundError:
        vapid = Vapid02()
        vapid.generate_keys()
        write_bytes_atomic(path, vapid.private_pem(), 0o600)
        log.info("made a Web Push (VAPID) key pair in {path}", path=path)
        return vapid
    if mode is not None:
        log.warn(
            "{path} has mode {mode} which is looser than 0600: run chmod 600 on it",
            path=path,
            mode=f"{mode:04o}",
        )
    return Vapid02.from_pem(pem)


def application_server_key(vapid: Vapid02) -> str:
    """The public key as ``applicationServerKey`` and the ``k=`` of a VAPID header want it."""
    return urlsafe_b64(
        vapid.public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
