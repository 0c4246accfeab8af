"""
Who a peer is for limits and logs: IPv6 keyed by prefix, and the client behind a trusted
reverse proxy (X-Forwarded-For, RFC 7239 Forwarded), never an untrusted peer's say-so.
"""

import ipaddress

import pytest

from piserver.security.addresses import (
    AddressKeys,
    ForwardedHeader,
    TrustedProxies,
    forwarded_for,
    node_address,
    parse_network,
)


def test_ipv6_peers_are_keyed_by_their_prefix():
    keys = AddressKeys()
    assert keys.key("2001:db8:1:2::1") == keys.key("2001:db8:1:2:ffff:1:2:3") == "2001:db8:1:2::/64"
    assert keys.key("2001:db8:1:3::1") != keys.key("2001:db8:1:2::1")
    assert AddressKeys(56).key("2001:db8:1:2ff::1") == AddressKeys(56).key("2001:db8:1:200::9")
    assert keys.key("203.0.113.7") == "203.0.113.7"
    # A dual-stack listener sees IPv4 clients as mapped addresses: still one IPv4 address.
    assert keys.key("::ffff:203.0.113.7") == "203.0.113.7"
    assert keys.key("fe80::1%lo") == "fe80::/64"
    assert keys.key(None) == "-"
    assert keys.key("/run/pi.sock") == "/run/pi.sock"


@pytest.mark.parametrize(
    "header, expected",
    [
        ("for=192.0.2.60;proto=http;by=203.0.113.43", ["192.0.2.60"]),
        ('for="[2001:db8:cafe::17]:4711"', ["[2001:db8:cafe::17]:4711"]),
        ("for=192.0.2.43, for=198.51.100.17", ["192.0.2.43", "198.51.100.17"]),
        ('For="_gazonk", proto=https', ["_gazonk", ""]),
        ('for="a\\"b;c,d";proto=http', ['a"b;c,d']),
        ("", []),
        ('for="unterminated', None),
        ("for=1.2.3.4;for=5.6.7.8", None),
        ("garbage", None),
        ("for=1.2.3.4 junk", None),
    ],
)
def test_forwarded_header_parsing(header, expected):
    assert forwarded_for(header) == expected


@pytest.mark.parametrize(
    "node, address",
    [
        ("192.0.2.60", "192.0.2.60"),
        (" 192.0.2.60:8080 ", "192.0.2.60"),
        ("[2001:db8::17]:4711", "2001:db8::17"),
        ("[2001:db8::17]", "2001:db8::17"),
        ("2001:db8::17", "2001:db8::17"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("unknown", None),
        ("_hidden", None),
        ("[2001:db8::17", None),
        ("[2001:db8::17]x", None),
        ("192.0.2.60:http", None),
        ("example.com", None),
        ("", None),
    ],
)
def test_node_addresses(node, address):
    assert node_address(node) == address


PROXIES = TrustedProxies((parse_network("10.0.0.0/8"), parse_network("::1")))


def test_an_untrusted_peer_is_itself_whatever_it_says():
    assert PROXIES.client("203.0.113.9", ["198.51.100.1"]) == "203.0.113.9"
    assert PROXIES.client("2001:db8::9", ["198.51.100.1"]) == "2001:db8::9"


def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy():
    # The client wrote 1.1.1.1 itself; the first proxy appended what it saw, then the next.
    assert PROXIES.client("10.0.0.2", ["1.1.1.1, 198.51.100.7, 10.0.0.1"]) == "198.51.100.7"
    # Several header lines are one list, in order.
    assert PROXIES.client("10.0.0.2", ["1.1.1.1", "198.51.100.7,10.0.0.1"]) == "198.51.100.7"
    assert PROXIES.client("::1", ["[2001:db8::5]:443"]) == "2001:db8::5"
    assert PROXIES.client("::ffff:10.0.0.2", ["198.51.100.7"]) == "198.51.100.7"
    # Only trusted hops: the farthest one is the client.
    assert PROXIES.client("10.0.0.2", ["10.0.0.7, 10.0.0.1"]) == "10.0.0.7"


def test_a_hop_that_is_no_address_ends_the_walk_at_the_last_known_one():
    assert PROXIES.client("10.0.0.2", ["198.51.100.7, unknown"]) == "10.0.0.2"
    assert PROXIES.client("10.0.0.2", ["198.51.100.7, garbage, 10.0.0.1"]) == "10.0.0.1"
    assert PROXIES.client("10.0.0.2", []) == "10.0.0.2"
    assert PROXIES.client("10.0.0.2", [", ,"]) == "10.0.0.2"


def test_only_the_chosen_header_is_read():
    forwarded = TrustedProxies(PROXIES.networks, ForwardedHeader.forwarded)
    assert forwarded.client("10.0.0.2", ['for="[2001:db8::5]:80";proto=https']) == "2001:db8::5"
    assert forwarded.client("10.0.0.2", ["for=198.51.100.1, for=10.0.0.3"]) == "198.51.100.1"
    # An X-Forwarded-For value is not a Forwarded header: nothing parses, the peer stands.
    assert forwarded.client("10.0.0.2", ["198.51.100.1"]) == "10.0.0.2"
    assert forwarded.client("10.0.0.2", ['for="broken']) == "10.0.0.2"


def test_trusted_proxy_networks():
    assert parse_network("10.1.2.3") == ipaddress.ip_network("10.1.2.3/32")
    assert parse_network("10.1.2.3/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network("2001:db8::/32").prefixlen == 32
    for bad in ("nope", "10.0.0.0/33", "::ffff:10.0.0.1"):
        with pytest.raises(ValueError):
            parse_network(bad)
    assert not PROXIES.trusts(None)
    assert not PROXIES.trusts("/run/pi.sock")
    assert PROXIES.trusts("10.255.0.1") and not PROXIES.trusts("11.0.0.1")
