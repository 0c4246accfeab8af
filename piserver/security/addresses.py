"""
Who a peer is, as far as limits and logs are concerned.

- ``AddressKeys``: the key per-address limits count under: an IPv4 address as it is, an
  IPv6 address by its prefix (a /64 by default: one subscriber usually holds a whole /64,
  so counting single addresses would give an attacker billions of them), an IPv4-mapped
  IPv6 address (``::ffff:a.b.c.d``, what a dual-stack listener sees) as its IPv4 address.
- ``TrustedProxies``: the client address behind reverse proxies the operator trusts
  (``--trusted-proxy CIDR``). Only when the TCP peer is inside a trusted network is the
  forwarding header read (``X-Forwarded-For``, or RFC 7239 ``Forwarded: for=`` when chosen
  with ``--forwarded-header``); the client is the rightmost address of the chain that is
  not itself a trusted proxy. Anything else's headers are ignored: they are the client's
  own words.

Only one header is read, the one the operator's proxy writes: a proxy that appends to
``X-Forwarded-For`` passes a client's own ``Forwarded`` header through untouched, so
reading both would let a client choose its address.
"""

import enum
import ipaddress
import re

import attr

DEFAULT_IPV6_PREFIX = 64


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, an IPv4-mapped IPv6 one as IPv4; None for anything else (a host
    name, a UNIX socket's path, garbage). A zone (``fe80::1%eth0``) is dropped."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attr.frozen
class AddressKeys:
    """``key(host)``: what one "address" is for per-address limits."""

    ipv6_prefix: int = DEFAULT_IPV6_PREFIX

    def key(self, host: str | None) -> str:
        address = parse_ip(host) if host else None
        if address is None:
            # A UNIX socket peer and the like: all of them are one "address".
            return host or "-"
        if isinstance(address, ipaddress.IPv4Address):
            return str(address)
        network = ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False)
        return str(network)


class ForwardedHeader(enum.Enum):
    """Which header a trusted proxy writes the client's address into."""

    x_forwarded_for = "x-forwarded-for"
    forwarded = "forwarded"

    def __str__(self) -> str:
        return self.value


# RFC 7239 section 4: forwarded-element = forwarded-pair *( ";" forwarded-pair ), each a
# token "=" (token / quoted-string); elements are separated by commas. A comma or
# semicolon inside a quoted string belongs to the value.
_PAIR = re.compile(
    r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s"]*)\s*([;,]|$)'
)


def forwarded_for(value: str) -> list[str] | None:
    """The ``for=`` values of a ``Forwarded`` header, in order (an element without one
    gives ""); None if the header does not parse."""
    found = []
    current = None
    position = 0
    value = value.strip()
    if not value:
        return []
    while position < len(value):
        match = _PAIR.match(value, position)
        if match is None or match.end() == position:
            return None
        name, raw, separator = match.groups()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if name.lower() == "for":
            if current is not None:
                # Two for= in one element: not something a proxy writes.
                return None
            current = raw
        position = match.end()
        if separator != ";":
            found.append(current or "")
            current = None
    return found


def node_address(node: str) -> str | None:
    """The IP address of a ``for=`` node or an ``X-Forwarded-For`` entry: ``1.2.3.4``,
    ``1.2.3.4:5678``, ``[2001:db8::1]``, ``[2001:db8::1]:80`` or a bare IPv6 address;
    None for ``unknown``, an obfuscated ``_name`` or anything else."""
    node = node.strip()
    if node.startswith("["):
        end = node.find("]")
        if end < 0 or not (end == len(node) - 1 or node[end + 1] == ":"):
            return None
        host = node[1:end]
    elif node.count(":") == 1:
        host, _, port = node.partition(":")
        if not port.isdigit():
            return None
    else:
        host = node
    address = parse_ip(host)
    return None if address is None else str(address)


@attr.frozen
class TrustedProxies:
    """``networks``: ``ipaddress`` networks whose peers are trusted to say who their
    client is, in ``header``."""

    networks: tuple = ()
    header: ForwardedHeader = ForwardedHeader.x_forwarded_for

    def trusts(self, host: str | None) -> bool:
        address = parse_ip(host) if host else None
        return address is not None and any(
            address.version == network.version and address in network for network in self.networks
        )

    def client(self, peer: str | None, values: list[str]) -> str | None:
        """The client's address for a TCP peer ``peer`` whose request carried ``values``
        of the header (each occurrence, in order): the peer itself unless it is trusted
        and the header names another address."""
        if not self.trusts(peer):
            return peer
        chain = self._chain(values)
        if chain is None:
            return peer
        # From the nearest hop outwards: every trusted proxy is skipped; the first hop
        # that is not one is the client. A hop that is not an address ends the walk: it
        # was written by someone we cannot vouch for.
        client = peer
        for node in reversed(chain):
            address = node_address(node)
            if address is None:
                return client
            client = address
            if not self.trusts(address):
                return address
        return client

    def _chain(self, values: list[str]) -> list[str] | None:
        joined = ",".join(values)
        if self.header is ForwardedHeader.forwarded:
            return forwarded_for(joined)
        return [node for node in joined.split(",") if node.strip()]


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A ``--trusted-proxy`` value: a CIDR, or one address (a /32 or /128). ValueError
    otherwise."""
    network = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        raise ValueError("give IPv4 networks in IPv4 form")
    return network
