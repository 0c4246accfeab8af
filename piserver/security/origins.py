"""
Which browser pages may open ``/rpc``: the server's own origin and the ones
listed with ``--allowed-origin``. Clients that send no ``Origin`` header (the
iOS app, scripts) are not browsers and are not checked here.

A page's origin is the server's own only when its host is one of the server's
names (the address the client connected to, ``localhost``, the machine's host
name, names given with ``--server-name``): comparing it with the ``Host``
header alone lets a DNS-rebinding page (whose Origin and Host both name the
attacker's domain) through. On a loopback address the ``Host`` header itself
must be one of those names, whoever the client is.
"""

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

import attr

DEFAULT_PORTS = {"http": 80, "https": 443}


@attr.frozen
class Origin:
    """A web origin: scheme, host and port (the default port filled in)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS[self.scheme]:
            return f"{self.scheme}://{host}"
        return f"{self.scheme}://{host}:{self.port}"


def parse_origin(text: str) -> Origin:
    """
    ``scheme://host[:port]`` with scheme http or https, as browsers send it
    (a trailing ``/`` is tolerated). Raises ValueError saying what is wrong.
    """
    parts = _split(text)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError("an origin starts with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("an origin has no user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError("an origin is scheme://host[:port], without a path")
    return Origin(parts.scheme, _hostname(parts), _port(parts))


def host_origin(host_header: str, secure: bool) -> Origin:
    """The origin a request's ``Host`` header names on this server (https if TLS)."""
    scheme = "https" if secure else "http"
    if not host_header or any(c in host_header for c in "/?#@\\ "):
        raise ValueError("not a host[:port]")
    parts = _split(f"{scheme}://{host_header}")
    return Origin(scheme, _hostname(parts), _port(parts))


def origin_allowed(
    origin_header: str,
    host_header: str | None,
    secure: bool,
    server_names: Collection[str],
    allowed: Collection[Origin] = (),
) -> bool:
    """
    Whether a browser page at ``origin_header`` may open ``/rpc``: it is listed,
    or it is the server's own origin: same scheme, host and port as ``Host``,
    and a host among ``server_names`` (lower case, IPv6 without brackets).
    Anything unparsable (including ``null``) is refused.
    """
    try:
        origin = parse_origin(origin_header)
    except ValueError:
        return False
    if origin in allowed:
        return True
    try:
        own = host_header is not None and origin == host_origin(host_header, secure)
    except ValueError:
        return False
    return own and origin.host in server_names


def host_allowed(host_header: str | None, server_names: Collection[str]) -> bool:
    """Whether the ``Host`` header names the server by one of ``server_names``."""
    try:
        return (
            host_header is not None and host_origin(host_header, secure=False).host in server_names
        )
    except ValueError:
        return False


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def normal_name(name: str) -> str:
    """A host name or address as ``Origin.host`` holds it: lower case, no brackets."""
    return name.strip().lower().removeprefix("[").removesuffix("]")


def _split(text: str):
    try:
        return urlsplit(text.strip())
    except ValueError as e:
        raise ValueError(f"not a URL origin ({e})") from None


def _hostname(parts) -> str:
    if not parts.hostname:
        raise ValueError("the host is missing")
    return parts.hostname


def _port(parts) -> int:
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port is not a number from 0 to 65535") from None
    return DEFAULT_PORTS[parts.scheme] if port is None else port
