"""
Upgrade checks and limits of /rpc on a fake clock: keepalive, handshake timeout,
concurrent connections, origins; and the options that set them.
"""

import os

import pytest
from twisted.internet.testing import StringTransport
from twisted.python import usage

from piserver.common.defaults import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)
from piserver.security.origins import parse_origin
from piserver.tap import Options
from piserver.web.site import make_site
from tests.support.piagent import VERSION_ONLY_PI
from tests.support.wsharness import MemoryServer, SilentClient, hello_frame


class SocketTransport(StringTransport):
    """Like a TCP transport, unregistering a producer when none is registered is fine."""

    def unregisterProducer(self):
        self.producer = None
        self.streaming = None


def refused(client):
    """Why the server refused the upgrade (it must have been refused)."""
    assert not client.opened
    was_clean, code, reason = client.close_info
    return reason


def test_defaults_notice_a_vanished_phone_within_a_minute():
    assert DEFAULT_KEEPALIVE_INTERVAL + DEFAULT_KEEPALIVE_TIMEOUT <= 60
    server = MemoryServer()
    assert server.factory.autoPingInterval == DEFAULT_KEEPALIVE_INTERVAL
    assert server.factory.autoPingTimeout == DEFAULT_KEEPALIVE_TIMEOUT
    assert server.factory.openHandshakeTimeout == DEFAULT_HANDSHAKE_TIMEOUT
    assert server.factory.max_connections == DEFAULT_MAX_CONNECTIONS


def test_silent_client_is_dropped_by_keepalive():
    server = MemoryServer(keepalive_interval=20, keepalive_timeout=15)
    client = server.open(protocol_class=SilentClient)
    assert len(server.hub.connections) == 1
    server.advance(20)  # the ping goes out; nothing answers it
    server.advance(14.5)
    assert len(server.hub.connections) == 1
    assert client.close_info is None
    server.advance(1)
    assert server.hub.connections == {}
    was_clean, code, reason = client.close_info
    assert was_clean is False


def test_answering_client_is_kept_alive():
    server = MemoryServer(keepalive_interval=20, keepalive_timeout=15)
    client = server.open()
    for _ in range(10):
        server.advance(10)
    assert len(server.hub.connections) == 1
    assert client.close_info is None
    client.sendMessage(hello_frame())
    server.flush()
    assert client.received[-1]["ok"] is True


def test_handshake_timeout_drops_a_client_that_never_upgrades():
    server = MemoryServer(handshake_timeout=7)
    protocol = server.factory.buildProtocol(None)
    transport = SocketTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /rpc HTTP/1.1\r\nHost: localhost\r\n")  # never finished
    server.reactor.advance(6.9)
    assert not transport.disconnecting
    server.reactor.advance(0.2)
    assert transport.disconnecting
    assert server.factory.getConnectionCount() == 1  # until the transport reports the loss


def test_http_side_idle_timeout_is_the_handshake_timeout():
    # Behind the Site, Autobahn starts only once the upgrade request is complete: the
    # Site's idle timeout is what bounds a client that connects and says nothing.
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.resource import Resource

    clock = MemoryReactorClock()
    site = make_site(Resource(), {}, reactor=clock, idle_timeout=7)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    clock.advance(6.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def test_connections_over_the_limit_are_refused_with_503():
    server = MemoryServer(max_connections=2)
    first = server.open()
    server.open()
    reason = refused(server.open())
    assert "503" in reason and "too many connections" in reason
    assert len(server.hub.connections) == 2
    first.sendClose()
    server.flush()
    third = server.open()
    third.sendMessage(hello_frame())
    server.flush()
    assert third.received[-1]["ok"] is True


@pytest.mark.parametrize(
    "url, origin",
    [
        ("ws://localhost:3141/rpc", None),
        ("ws://localhost:3141/rpc", "http://localhost:3141"),
        ("ws://localhost:3141/rpc", "https://app.example.com"),  # listed
    ],
)
def test_origins_accepted(url, origin):
    # (Over TLS the own origin is https: see tests/integration/test_hardening.py.)
    server = MemoryServer(allowed_origins={parse_origin("https://app.example.com")})
    headers = {"Origin": origin} if origin else {}
    client = server.open(url, headers=headers)
    client.sendMessage(hello_frame())
    server.flush()
    assert client.received[-1]["ok"] is True


@pytest.mark.parametrize(
    "url, origin",
    [
        ("ws://localhost:3141/rpc", "http://evil.example"),
        ("ws://localhost:3141/rpc", "http://localhost:3142"),
        ("ws://localhost:3141/rpc", "https://localhost:3141"),  # not TLS here
        ("ws://localhost:3141/rpc", "http://app.example.com"),  # listed with https only
        ("ws://localhost:3141/rpc", "null"),
    ],
)
def test_cross_origin_upgrades_refused_with_403(url, origin):
    server = MemoryServer(allowed_origins={parse_origin("https://app.example.com")})
    reason = refused(server.open(url, headers={"Origin": origin}))
    assert "403" in reason and "origin" in reason
    assert server.hub.connections == {}


def test_origin_is_checked_before_the_token():
    from piserver.security.auth import Authenticator

    server = MemoryServer(authenticator=Authenticator("sesame"))
    reason = refused(
        server.open(
            "ws://localhost:3141/rpc?token=sesame", headers={"Origin": "http://evil.example"}
        )
    )
    assert "403" in reason
    reason = refused(server.open(headers={"Origin": "http://localhost:3141"}))
    assert "401" in reason


def parse(tmp_path, *args):
    options = Options(environ={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    options.parseOptions(["--data-dir", str(tmp_path / "data"), "--pi", VERSION_ONLY_PI, *args])
    return options.config


def test_limit_options(tmp_path):
    config = parse(
        tmp_path,
        "--handshake-timeout",
        "5",
        "--keepalive-interval",
        "10",
        "--keepalive-timeout",
        "12.5",
        "--max-connections",
        "3",
    )
    assert (
        config.handshake_timeout,
        config.keepalive_interval,
        config.keepalive_timeout,
        config.max_connections,
    ) == (5.0, 10.0, 12.5, 3)
    defaults = parse(tmp_path)
    assert (
        defaults.handshake_timeout,
        defaults.keepalive_interval,
        defaults.keepalive_timeout,
        defaults.max_connections,
    ) == (
        DEFAULT_HANDSHAKE_TIMEOUT,
        DEFAULT_KEEPALIVE_INTERVAL,
        DEFAULT_KEEPALIVE_TIMEOUT,
        DEFAULT_MAX_CONNECTIONS,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--handshake-timeout", "0"], "--handshake-timeout must be a positive"),
        (["--keepalive-interval", "-1"], "--keepalive-interval must be a positive"),
        (["--keepalive-timeout", "0"], "--keepalive-timeout must be a positive"),
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--max-connections", "many"], "many"),
    ],
)
def test_bad_limit_options(tmp_path, args, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(tmp_path, *args)
