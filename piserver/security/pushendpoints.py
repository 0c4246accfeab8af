"""
A push subscription's endpoint is untrusted input: the server POSTs to it, so a device
token must not turn the server into a request forwarder into its own network.

An endpoint must be an ``https`` URL whose host is not, and does not resolve to, a
loopback, private, link-local, multicast, reserved or otherwise non-global address,
unless it starts with one of the prefixes the operator allows
(``--push-allow-endpoint``). The check is made when a subscription is registered and
again before each push (a name can be made to resolve elsewhere later).
"""

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from piserver.common.errors import InvalidParams
from piserver.security.addresses import parse_ip

MAX_ENDPOINT_LENGTH = 2048


class EndpointRefused(InvalidParams):
    """A push endpoint the server will not send to; the message says why."""


def getaddrinfo_resolver(in_thread) -> Callable[[str], Awaitable[list[str]]]:
    """A resolver running ``getaddrinfo`` off the reactor with ``in_thread(f, *args)``."""

    async def resolve(host: str) -> list[str]:
        infos = await in_thread(socket.getaddrinfo, host, 443, 0, socket.SOCK_STREAM)
        return [info[4][0] for info in infos]

    return resolve


def _internal(address: str) -> str | None:
    """Why ``address`` is not a public one, or None when it is."""
    ip = parse_ip(address)
    if ip is None:
        return "not an address"
    for attribute, what in (
        # The most telling name first: link-local and loopback addresses are private too.
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_unspecified", "unspecified"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, attribute):
            return what
    return None if ip.is_global else "not global"


class EndpointPolicy:
    """``allowed`` are URL prefixes taken as they are; ``resolve(host)`` returns the
    addresses of a name (see ``getaddrinfo_resolver``)."""

    def __init__(self, resolve: Callable[[str], Awaitable[list[str]]], allowed: Iterable[str] = ()):
        self._resolve = resolve
        self._allowed = tuple(allowed)

    async def check(self, endpoint: object) -> str:
        """``endpoint`` if the server may push to it; else raises ``EndpointRefused``."""
        if not isinstance(endpoint, str) or not endpoint:
            raise EndpointRefused('"subscription.endpoint" must be a URL')
        if len(endpoint) > MAX_ENDPOINT_LENGTH:
            raise EndpointRefused(f"push endpoints are at most {MAX_ENDPOINT_LENGTH} characters")
        if any(ord(c) < 0x21 or c == "\x7f" for c in endpoint):
            raise EndpointRefused("the push endpoint contains spaces or control characters")
        try:
            parts = urlsplit(endpoint)
            host = parts.hostname
            parts.port  # noqa: B018 (raises for a port that is no number)
        except ValueError:
            raise EndpointRefused("the push endpoint is not a valid URL") from None
        if any(endpoint.startswith(prefix) for prefix in self._allowed):
            return endpoint
        if parts.scheme != "https":
            raise EndpointRefused("push endpoints must be https URLs")
        if not host or parts.username is not None or parts.password is not None:
            raise EndpointRefused("the push endpoint must name a host (and no user)")
        shown = parts.netloc
        addresses = await self._addresses(host, shown)
        for address in addresses:
            why = _internal(address)
            if why is not None:
                raise EndpointRefused(
                    f"the push endpoint's host {shown} is or resolves to a {why} address "
                    f"({address}); the server pushes to public push services only, unless "
                    "--push-allow-endpoint allows the URL"
                )
        return endpoint

    async def _addresses(self, host: str, shown: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            addresses = await self._resolve(host)
        except Exception as e:
            raise EndpointRefused(
                f"the push endpoint's host {shown} does not resolve ({type(e).__name__})"
            ) from None
        if not addresses:
            raise EndpointRefused(f"the push endpoint's host {shown} does not resolve")
        return addresses
