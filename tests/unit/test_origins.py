"""Origin checks for browser upgrades, and --allowed-origin."""

import os

import pytest
from twisted.python import usage

from piserver.security.origins import (
    Origin,
    host_allowed,
    host_origin,
    origin_allowed,
    parse_origin,
)
from piserver.tap import Options
from tests.support.piagent import VERSION_ONLY_PI


@pytest.mark.parametrize(
    "text, expected",
    [
        ("https://app.example.com", Origin("https", "app.example.com", 443)),
        ("HTTPS://App.Example.COM:443", Origin("https", "app.example.com", 443)),
        ("https://app.example.com/", Origin("https", "app.example.com", 443)),
        ("http://localhost:3141", Origin("http", "localhost", 3141)),
        ("http://[::1]:3141", Origin("http", "::1", 3141)),
        ("http://10.0.0.2", Origin("http", "10.0.0.2", 80)),
    ],
)
def test_parse_origin(text, expected):
    assert parse_origin(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("null", "http:// or https://"),
        ("file://", "http:// or https://"),
        ("ws://a.example", "http:// or https://"),
        ("app.example.com", "http:// or https://"),
        ("https://", "host is missing"),
        ("https://a.example/path", "without a path"),
        ("https://a.example?x=1", "without a path"),
        ("https://a.example#top", "without a path"),
        ("https://a.example:99999", "port"),
        ("https://a.example:http", "port"),
        ("https://user@a.example", "user name"),
        ("http://[::1", "not a URL"),
    ],
)
def test_bad_origins(text, message):
    with pytest.raises(ValueError, match=message):
        parse_origin(text)


@pytest.mark.parametrize(
    "origin, expected",
    [
        (Origin("https", "a.example", 443), "https://a.example"),
        (Origin("http", "a.example", 8080), "http://a.example:8080"),
        (Origin("http", "::1", 3141), "http://[::1]:3141"),
    ],
)
def test_origin_text(origin, expected):
    assert str(origin) == expected
    assert parse_origin(str(origin)) == origin


def test_host_origin():
    assert host_origin("pi.example:3141", secure=False) == Origin("http", "pi.example", 3141)
    assert host_origin("pi.example", secure=True) == Origin("https", "pi.example", 443)
    assert host_origin("[::1]:3141", secure=False) == Origin("http", "::1", 3141)
    for bad in ("", "user@pi.example", "pi.example/x", "pi.example:port"):
        with pytest.raises(ValueError):
            host_origin(bad, secure=False)


@pytest.mark.parametrize(
    "origin, host, secure, allowed, expected",
    [
        # The server's own origin: same scheme, host and port as the Host header.
        ("http://pi.example:3141", "pi.example:3141", False, (), True),
        ("http://PI.example:3141", "pi.example:3141", False, (), True),
        ("https://pi.example", "pi.example:443", True, (), True),
        ("https://pi.example:3141", "pi.example:3141", True, (), True),
        ("http://pi.example:3141", "pi.example:3141", True, (), False),  # scheme differs
        ("https://pi.example:3141", "pi.example:3141", False, (), False),
        ("http://pi.example:3142", "pi.example:3141", False, (), False),  # port differs
        ("http://pi.example", "pi.example:3141", False, (), False),
        ("http://evil.example:3141", "pi.example:3141", False, (), False),  # host differs
        ("http://pi.example.evil.example:3141", "pi.example:3141", False, (), False),
        ("http://pi.example:3141", None, False, (), False),
        ("http://pi.example:3141", "user@pi.example:3141", False, (), False),
        # Listed origins.
        (
            "https://app.example",
            "pi.example:3141",
            False,
            {Origin("https", "app.example", 443)},
            True,
        ),
        (
            "https://app.example:444",
            "pi.example:3141",
            False,
            {Origin("https", "app.example", 443)},
            False,
        ),
        (
            "http://app.example",
            "pi.example:3141",
            False,
            {Origin("https", "app.example", 443)},
            False,
        ),
        # Anything unparsable is refused.
        ("null", "pi.example:3141", False, (), False),
        ("", "pi.example:3141", False, (), False),
        ("http://pi.example:3141/path", "pi.example:3141", False, (), False),
    ],
)
def test_origin_allowed(origin, host, secure, allowed, expected):
    assert origin_allowed(origin, host, secure, {"pi.example"}, allowed) is expected


@pytest.mark.parametrize(
    "origin, host, expected",
    [
        # A page rebound to the server: Origin and Host agree, but name the attacker's domain.
        ("http://rebind.evil.example:3141", "rebind.evil.example:3141", False),
        ("http://localhost:3141", "localhost:3141", True),
        ("http://127.0.0.1:3141", "127.0.0.1:3141", True),
        ("http://[::1]:3141", "[::1]:3141", True),
    ],
)
def test_own_origin_needs_a_server_name(origin, host, expected):
    names = {"localhost", "127.0.0.1", "::1"}
    assert origin_allowed(origin, host, False, names) is expected


def test_host_allowed():
    names = {"localhost", "127.0.0.1", "pi.example"}
    assert host_allowed("localhost:3141", names) and host_allowed("PI.example", names)
    assert host_allowed("127.0.0.1:1", names)
    assert not host_allowed("rebind.evil.example:3141", names)
    assert not host_allowed(None, names) and not host_allowed("a/b", names)


def parse(tmp_path, *args):
    options = Options(environ={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    options.parseOptions(["--data-dir", str(tmp_path / "data"), "--pi", VERSION_ONLY_PI, *args])
    return options.config


def test_allowed_origin_option_is_repeatable(tmp_path):
    config = parse(
        tmp_path,
        "--allowed-origin",
        "https://app.example.com",
        "--allowed-origin",
        "http://localhost:5173/",
    )
    assert config.allowed_origins == {
        Origin("https", "app.example.com", 443),
        Origin("http", "localhost", 5173),
    }
    assert parse(tmp_path).allowed_origins == frozenset()


def test_bad_allowed_origin_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match="--allowed-origin 'app.example.com'"):
        parse(tmp_path, "--allowed-origin", "app.example.com")
    with pytest.raises(usage.UsageError, match="without a path"):
        parse(tmp_path, "--allowed-origin", "https://app.example.com/ui")
