"""
The cap on connections that have not authenticated: refused at once when full, room
shared fairly between addresses, released when authenticated or closed; the HTTP site
and the WebSocket upgrade counting into it; the default from the descriptor limit.
"""

import os
import resource

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from piserver.security.addresses import AddressKeys, TrustedProxies, parse_network
from piserver.security.admission import PendingConnections, default_max_pending
from piserver.tap import Options
from piserver.web.site import make_site
from tests.support.piagent import VERSION_ONLY_PI
from tests.support.wsharness import MemoryServer, hello_frame


class Recorder:
    def __init__(self):
        self.refusals = []

    def __call__(self, kind, key, message):
        self.refusals.append((kind, key))


def test_default_is_half_the_descriptor_limit_within_bounds():
    assert default_max_pending(1024) == 512
    assert default_max_pending(20) == 16
    assert default_max_pending(1_048_576) == 4096


def test_full_refuses_an_address_holding_as_many_as_any():
    recorder = Recorder()
    pending = PendingConnections(3, recorder)
    a = [StringTransport() for _ in range(4)]
    assert all(pending.admit(t, "a") for t in a[:3])
    assert not pending.admit(a[3], "a")
    assert recorder.refusals == [("pending_cap", "a")]
    assert len(pending) == 3 and not any(t.disconnecting for t in a)


def test_a_newcomer_takes_the_place_of_the_heaviest_addresss_oldest():
    recorder = Recorder()
    pending = PendingConnections(4, recorder)
    a = [StringTransport() for _ in range(3)]
    b = StringTransport()
    for t in a:
        pending.admit(t, "a")
    pending.admit(b, "b")
    newcomer = StringTransport()
    assert pending.admit(newcomer, "c")
    assert a[0].disconnected and not a[1].disconnecting
    assert recorder.refusals == [("pending_evicted", "a")]
    # a holds 2, b 1, c 1: another from c may push out a's next oldest ...
    c2 = StringTransport()
    assert pending.admit(c2, "c")
    assert a[1].disconnected
    # ... but now a, c hold 2 each, the most: a third from c is refused.
    assert not pending.admit(StringTransport(), "c")
    assert len(pending) == 4


def test_release_is_idempotent_and_frees_room():
    pending = PendingConnections(2)
    one, two = StringTransport(), StringTransport()
    pending.admit(one, "a")
    pending.admit(two, "a")
    pending.release(one)
    pending.release(one)
    pending.release(StringTransport())
    assert len(pending) == 1
    assert pending.admit(StringTransport(), "a")
    assert not pending.admit(StringTransport(), "a")
    # Every connection gone: empty, and the heaviest count with it.
    for transport in list(pending._keys):
        pending.release(transport)
    assert len(pending) == 0 and pending._heaviest == 0 and pending._by_count == {}


def site_with(pending, **kwargs):
    return make_site(
        Resource(), {}, reactor=MemoryReactorClock(), pending_connections=pending, **kwargs
    )


def connect(site, host):
    channel = site.buildProtocol(None)
    address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    return channel, transport


def test_the_site_counts_connections_until_closed_and_closes_refused_ones_at_once():
    recorder = Recorder()
    pending = PendingConnections(2, recorder)
    site = site_with(pending, address_keys=AddressKeys(64))
    first, first_transport = connect(site, "2001:db8:0:1::1")
    connect(site, "2001:db8:0:1::2")
    # A third address of the same /64 is the same address: refused, nothing written.
    _, refused = connect(site, "2001:db8:0:1::3")
    assert refused.disconnected and refused.value() == b""
    assert recorder.refusals == [("pending_cap", "2001:db8:0:1::/64")]
    first.connectionLost(None)
    assert len(pending) == 1
    _, admitted = connect(site, "2001:db8:0:1::4")
    assert not admitted.disconnecting


def test_a_trusted_proxy_is_not_held_to_the_per_address_limit():
    pending = PendingConnections(100)
    proxies = TrustedProxies((parse_network("10.0.0.1"),))
    site = site_with(pending, max_pending_per_address=2, proxies=proxies)
    through_proxy = [connect(site, "10.0.0.1")[1] for _ in range(5)]
    assert not any(t.disconnecting for t in through_proxy)
    direct = [connect(site, "10.0.0.2")[1] for _ in range(3)]
    assert b"503" in direct[2].value() and not direct[1].disconnecting


def test_an_upgrade_counts_until_it_is_open():
    pending = PendingConnections(10)
    server = MemoryServer(pending_connections=pending)
    protocol = server.factory.buildProtocol(None)
    transport = StringTransport()
    pending.admit(transport, "a")
    protocol.makeConnection(transport)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert len(pending) == 0
    # Through the in-memory client: open, and released.
    seen = []
    real_release = pending.release
    pending.release = lambda t: seen.append(t) or real_release(t)
    client = server.open()
    client.sendMessage(hello_frame())
    server.flush()
    assert client.opened and seen


def test_a_trusted_proxys_client_is_the_websockets_peer_and_others_are_themselves():
    server = MemoryServer(proxies=TrustedProxies((parse_network("127.0.0.0/8"),)))
    server.open(headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.7"})
    [connection] = server.hub.connections.values()
    assert connection.peer.startswith("198.51.100.7 (via ")
    untrusted = MemoryServer(proxies=TrustedProxies((parse_network("203.0.113.0/24"),)))
    untrusted.open(headers={"X-Forwarded-For": "198.51.100.7"})
    [connection] = untrusted.hub.connections.values()
    assert "198.51.100.7" not in connection.peer


def parse(tmp_path, *args):
    options = Options(environ={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    options.parseOptions(["--data-dir", str(tmp_path / "data"), "--pi", VERSION_ONLY_PI, *args])
    return options.config


def test_options(tmp_path):
    config = parse(
        tmp_path,
        *("--max-pending", "300", "--ipv6-prefix-length", "56"),
        *("--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1"),
        *("--forwarded-header", "Forwarded"),
    )
    assert (config.max_pending, config.nofile_limit, config.ipv6_prefix_length) == (300, None, 56)
    assert [str(n) for n in config.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert str(config.forwarded_header) == "forwarded"
    defaults = parse(tmp_path)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert defaults.nofile_limit == soft
    assert defaults.max_pending == default_max_pending(soft)
    assert defaults.trusted_proxies == () and str(defaults.forwarded_header) == "x-forwarded-for"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-pending", "0"], "--max-pending must be at least 1"),
        (["--ipv6-prefix-length", "129"], "--ipv6-prefix-length is 8 to 128"),
        (["--trusted-proxy", "proxy.example"], "--trusted-proxy 'proxy.example'"),
        (["--forwarded-header", "x-real-ip"], "--forwarded-header is one of"),
    ],
)
def test_bad_options(tmp_path, args, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(tmp_path, *args)


class ClientOf(Resource):
    """Answers the client address the request has."""

    isLeaf = True

    def render_GET(self, request):
        return request.getClientAddress().host.encode()


def client_address_seen(proxies, peer: str, headers: bytes) -> bytes:
    site = make_site(Resource(), {}, reactor=MemoryReactorClock(), proxies=proxies)
    site.resource.putChild(b"who", ClientOf())
    lines = []
    site.log = lambda request: lines.append(site._logFormatter(site._logDateTime, request))
    channel = site.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /who HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    return transport.value().rsplit(b"\r\n\r\n", 1)[1], lines


def test_an_http_request_through_a_trusted_proxy_has_the_forwarded_client():
    proxies = TrustedProxies((parse_network("10.0.0.0/8"),))
    header = b"X-Forwarded-For: 1.1.1.1, 198.51.100.7\r\n"
    body, lines = client_address_seen(proxies, "10.0.0.2", header)
    assert body.endswith(b"198.51.100.7")
    assert lines and lines[0].startswith('"198.51.100.7"')
    body, lines = client_address_seen(proxies, "203.0.113.9", header)
    assert body.endswith(b"203.0.113.9") and lines[0].startswith('"203.0.113.9"')
