"""
Tokens that open ``/rpc``: the server token and named device tokens.

A token value is never logged and never part of an error message; device
tokens are not even stored, only their hashes.
"""

import datetime
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable, Iterable

import attr
from twisted.logger import Logger

from piserver.common.files import (
    CorruptFileError,
    load_json,
    loose_mode,
    move_aside,
    write_bytes_atomic,
    write_json_atomic,
)
from piserver.security.scopes import DEFAULT_SCOPES, Grant, Scope, scope_list

_log = Logger()

SERVER_TOKEN_FILE = "server-token"
DEVICE_TOKENS_FILE = "device-tokens.json"
DEVICE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")

# 32 random bytes, as the URL-safe base64 that fits in a query string unescaped.
_TOKEN_BYTES = 32
_DEVICE_TOKENS_VERSION = 1
_HASH_PREFIX = "sha256:"


class TokenError(ValueError):
    """A token or device name was refused; the message never contains a token."""


@attr.frozen
class DeviceToken:
    """A device token that was presented and matched: its device, its id (the stored
    hash, which tells a revoked token from a new one of the same name) and its grant."""

    name: str
    token_id: str
    grant: Grant


def grant_from_entry(name: str, device: dict) -> Grant:
    """
    A device entry's grant. Entries written before scopes existed have none of the keys
    and hold the default (every scope, every session), as new tokens do. A key that is
    there but malformed gives nothing rather than everything, and a scope name this
    server does not know is ignored.
    """
    scopes = device.get("scopes", None)
    if scopes is None:
        scopes = DEFAULT_SCOPES
    elif isinstance(scopes, list):
        scopes = frozenset(Scope(s) for s in scopes if s in Scope.__members__.values())
    else:
        scopes = frozenset()
    repos = device.get("repos")
    if repos is not None:
        listed = repos if isinstance(repos, list) else []
        repos = frozenset(r for r in listed if isinstance(r, str))
    return Grant(
        device=name,
        scopes=scopes,
        repos=repos,
        own_sessions=device.get("ownSessions", False) is not False,
    )


def generate_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def tokens_match(presented: str, expected: str) -> bool:
    """Whether ``presented`` is ``expected``, in time independent of where they differ.

    Both are hashed first so the comparison does not reveal the expected
    length either. An empty expected token matches nothing.
    """
    if not expected:
        return False
    return hmac.compare_digest(_sha256(presented), _sha256(expected))


def load_or_create_server_token(
    data_dir: str | os.PathLike, explicit: str | None = None, log: Logger | None = None
) -> tuple[str, str]:
    """
    The server token and where it came from: ``"option"`` (``explicit``, from
    ``--auth-token`` or the environment), ``"file"`` (``<data_dir>/server-token``)
    or ``"generated"`` (new, now stored in that file with mode 0600).

    Raises ``TokenError`` for an empty explicit token or an unreadable token file.
    A token file that group or others can read is used, with a warning.
    """
    log = log or _log
    if explicit is not None:
        explicit = explicit.strip()
        if not explicit:
            raise TokenError("the auth token given is empty")
        return explicit, "option"
    path = os.path.join(os.fspath(data_dir), SERVER_TOKEN_FILE)
    try:
        with open(path, "rb") as token_file:
            mode = loose_mode(token_file.fileno())
            data = token_file.read()
    except FileNotFoundError:
        data = None
    if data is not None:
        try:
            token = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise TokenError(f"{path} is not UTF-8 text; fix or delete it") from None
        if mode is not None:
            log.warn(
                "{path} has mode {mode} which is looser than 0600: run chmod 600 on it",
                path=path,
                mode=f"{mode:04o}",
            )
        if token:
            return token, "file"
        log.warn("{path} is empty: generating a new server token", path=path)
    token = generate_token()
    write_bytes_atomic(path, (token + "\n").encode("ascii"))
    return token, "generated"


def read_token_file(path: str | os.PathLike, log: Logger | None = None) -> str:
    """The token in ``path`` (``--auth-token-file``), stripped; TokenError if it has none.
    A file that group or others can read is used, with a warning."""
    log = log or _log
    with open(path, "rb") as token_file:
        mode = loose_mode(token_file.fileno())
        data = token_file.read()
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TokenError(f"{os.fspath(path)} is not UTF-8 text") from None
    if not token:
        raise TokenError(f"{os.fspath(path)} is empty")
    if mode is not None:
        log.warn(
            "{path} has mode {mode} which is looser than 0600: run chmod 600 on it",
            path=os.fspath(path),
            mode=f"{mode:04o}",
        )
    return token


class DeviceTokenStore:
    """
    Named device tokens in ``device-tokens.json``:
    ``{"version": 1, "devices": {name: {"createdAt": ISO-8601, "hash": "sha256:<hex>",
    "scopes": [...], "repos": [...], "ownSessions": bool}}}``; the last three are optional
    (see ``grant_from_entry``), so files from before scopes keep working.

    Only a SHA-256 of each token is kept. The tokens are 256 random bits, so
    nobody can guess one from its hash; salts and slow hashes (scrypt,
    PBKDF2) protect low-entropy passwords and would only make every
    connection's check slower.

    Every operation re-reads the file when it changed on disk, so a server sees
    tokens added or revoked by ``pi-server token`` in another process. A
    corrupt file is moved aside (logged at critical level) and its tokens stop
    working: the store fails closed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        clock: Callable[[], float],
        log: Logger | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._log = log or _log
        self._devices: dict[str, dict] = {}
        self._file_identity: tuple | None = None

    def add(
        self,
        name: str,
        scopes: Iterable[Scope] = DEFAULT_SCOPES,
        repos: Iterable[str] | None = None,
        own_sessions: bool = False,
    ) -> str:
        """Create a token for device ``name`` with ``scopes``, limited to the sessions of
        ``repos`` (None: all) and, with ``own_sessions``, to those it creates. Returns the
        token (shown once, never stored).

        Raises ``TokenError`` for an invalid or already used name, or no scope.
        """
        scopes = frozenset(scopes)
        if not scopes:
            raise TokenError("a device token needs at least one scope")
        if not DEVICE_NAME.match(name):
            raise TokenError("a device name is 1 to 64 letters, digits, '_', '.' or '-'")
        devices = dict(self._current())
        if name in devices:
            raise TokenError(f"there is already a device named {name}; revoke it first")
        token = generate_token()
        entry = {
            "createdAt": _iso8601(self._clock()),
            "hash": _token_hash(token),
            "scopes": scope_list(scopes),
            "ownSessions": bool(own_sessions),
        }
        if repos is not None:
            entry["repos"] = sorted(set(repos))
        devices[name] = entry
        self._write(devices)
        self._log.info("added a device token for {device}", device=name)
        return token

    def list(self) -> list[dict]:
        """``[{name, createdAt, grant}]`` sorted by name; hashes are never returned."""
        return [
            {
                "name": name,
                "createdAt": device.get("createdAt"),
                "grant": grant_from_entry(name, device),
            }
            for name, device in sorted(self._current().items())
        ]

    def names(self) -> frozenset[str]:
        """The names of the devices that currently have a token."""
        return frozenset(self._current())

    def revoke(self, name: str) -> bool:
        """Remove a device's token; False if there is no such device."""
        devices = dict(self._current())
        if name not in devices:
            return False
        del devices[name]
        self._write(devices)
        self._log.info("revoked the device token of {device}", device=name)
        return True

    def verify(self, presented: str) -> str | None:
        """The name of the device whose token ``presented`` is, or None."""
        found = self.identify(presented)
        return found[0] if found is not None else None

    def find(self, presented: str) -> DeviceToken | None:
        """The device token ``presented`` is, with what it may do; None if none."""
        devices = self._current()
        found = self.identify(presented)
        if found is None:
            return None
        name, token_id = found
        return DeviceToken(name, token_id, grant_from_entry(name, devices[name]))

    def identify(self, presented: str) -> tuple[str, str] | None:
        """``(name, token id)`` of the device token ``presented`` is, or None. The id (the
        stored hash) tells a revoked token from a new one of the same name.

        Every entry is compared, in constant time, whichever matches.
        """
        presented_hash = _token_hash(presented).encode("ascii")
        matched = None
        for name, device in self._current().items():
            stored = device.get("hash")
            if not isinstance(stored, str):
                continue
            if hmac.compare_digest(presented_hash, stored.encode("ascii", "replace")):
                matched = (name, stored)
        return matched

    def token_ids(self) -> frozenset[str]:
        """The ids (see ``identify``) of the device tokens that are valid now."""
        return frozenset(
            device["hash"]
            for device in self._current().values()
            if isinstance(device.get("hash"), str)
        )

    def _current(self) -> dict[str, dict]:
        """The devices, re-read if the file changed since it was last read."""
        identity = self._identity()
        if identity != self._file_identity:
            self._devices = self._read()
            self._file_identity = identity
        return self._devices

    def _identity(self) -> tuple | None:
        # Writes replace the file by rename, so a new inode marks every change.
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (status.st_ino, status.st_mtime_ns, status.st_size)

    def _read(self) -> dict[str, dict]:
        try:
            document = load_json(self.path, self._log)
        except CorruptFileError:
            return {}
        if document is None:
            return {}
        try:
            mode = loose_mode(self.path)
        except FileNotFoundError:
            # Removed since it was read: what was read is still the last content.
            mode = None
        if mode is not None:
            self._log.warn(
                "{path} has mode {mode} which is looser than 0600: run chmod 600 on it",
                path=self.path,
                mode=f"{mode:04o}",
            )
        devices = document.get("devices")
        if document.get("version") != _DEVICE_TOKENS_VERSION or not isinstance(devices, dict):
            move_aside(self.path, "not a version 1 device token file", self._log)
            return {}
        return {name: device for name, device in devices.items() if isinstance(device, dict)}

    def _write(self, devices: dict[str, dict]) -> None:
        write_json_atomic(self.path, {"version": _DEVICE_TOKENS_VERSION, "devices": devices})
        self._devices = devices
        self._file_identity = self._identity()


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _token_hash(token: str) -> str:
    return _HASH_PREFIX + _sha256(token).hex()


def _iso8601(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")
