"""
Strangers cannot spend the server's descriptors, and behind a trusted reverse proxy the
limits and logs see the real clients (issue 21, points 15 and 19), against ``twistd
piserver`` processes under ``ulimit -n 1024`` (the systemd default before the unit raised
it): request-less sockets from 100 loopback addresses, and from one IPv6 /64; a real
proxy on loopback (tests/support/forwardingproxy.py) forwarding WebSocket upgrades.
"""

import contextlib
import re
import resource
import socket
import subprocess
import sys
import time

import pytest

from tests.support.processes import free_port, wait_until
from tests.support.serverprocess import (
    RawRpc,
    ServerProcess,
    open_websocket,
    read_head,
    status_of,
    upgrade_request,
)

TOKEN = "net-limits-test-server-token"
NOFILE = 1024
SOCKETS = 2000
# Long enough a listen queue that the whole flood reaches the server at once. (With
# Twisted's 50 the kernel answers the rest with SYN cookies, and a socket that never sends
# a byte never reaches the server: the flood would test the kernel.)
BACKLOG = 2048
PROXY_SOURCE = "127.0.0.9"
# Linux: bind an IPv6 source address that no interface holds (an AnyIP route delivers it).
IPV6_FREEBIND = 78
IPV6_NET = "fd00:7e57:15"


@pytest.fixture(scope="module", autouse=True)
def enough_files_for_the_test():
    """The test process opens thousands of sockets: its own soft limit goes up for it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < SOCKETS + 500:
        pytest.skip(f"this test opens {SOCKETS} sockets; the hard open-files limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, SOCKETS + 500), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(
        tmp_path_factory.mktemp("net-limits"),
        "--auth-token",
        TOKEN,
        "--trusted-proxy",
        PROXY_SOURCE,
        "--max-pending-per-address",
        "16",
        # Longer than the flood may take on a loaded machine: none of its connections
        # times out before the test has seen the cap held.
        "--handshake-timeout",
        "120",
        nofile=NOFILE,
        backlog=BACKLOG,
    ).start()
    yield process
    process.stop()


def metrics(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """``GET /metrics``: each sample by its name and labels."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    samples = {}
    for line in answer.partition(b"\r\n\r\n")[2].decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def refusals(samples: dict, kind: str) -> float:
    return samples.get(f'pi_server_refusals_total{{kind="{kind}"}}', 0.0)


def flood(family, sources, port: int, host: str) -> list[socket.socket]:
    """``SOCKETS`` non-blocking connects, spread evenly over ``sources``, that never send
    a byte."""
    opened = []
    for i in range(SOCKETS):
        s = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        s.setblocking(False)
        s.bind((sources[i % len(sources)], 0))
        s.connect_ex((host, port))
        opened.append(s)
    return opened


def shown(samples: dict) -> dict:
    return {
        name: value
        for name, value in samples.items()
        if "pending" in name or "fds" in name or "refusals_total" in name
    }


def turned_away(samples: dict) -> float:
    """Connections closed at once at the cap, or to make room at it."""
    return refusals(samples, "pending_cap") + refusals(samples, "pending_evicted")


def served_meanwhile(port: int, host: str = "127.0.0.1") -> None:
    """A legitimate client connects, authenticates and lists sessions."""
    client = RawRpc(port, TOKEN, host=host, timeout=30)
    assert client.call("session.list")["sessions"] == []
    client.close()


def test_a_distributed_slowloris_leaves_clients_served(server):
    # A client that was there before the flood keeps being served through it.
    before = RawRpc(server.port, TOKEN, timeout=30)
    assert before.call("session.list")["sessions"] == []
    limit = metrics(server.port)["pi_server_pending_connections_limit"]
    assert limit == NOFILE // 2
    started = time.monotonic()
    sources = [f"127.1.0.{n}" for n in range(1, 101)]
    sockets = flood(socket.AF_INET, sources, server.port, "127.0.0.1")
    try:
        # The flood is on: the cap is reached, and over a thousand more were turned away
        # (the rest comes as TCP retransmits: the accept queue overflows).
        wait_until(lambda: turned_away(metrics(server.port)) >= 1000, 30, "the flood")
        served_meanwhile(server.port)
        assert before.call("session.list")["sessions"] == []
        samples = metrics(server.port)
        flooded = time.monotonic() - started
    finally:
        for s in sockets:
            s.close()
    before.close()
    assert samples["pi_server_pending_connections"] <= limit
    assert samples["pi_server_pending_connections"] == limit
    assert samples["pi_server_open_fds"] < NOFILE - 100
    log = server.log()
    assert "Too many open files" not in log and "EMFILE" not in log
    assert "half the open-files limit of 1024" in log
    print(
        f"flood of {SOCKETS} from 100 addresses: client served after {flooded:.2f} s;",
        shown(samples),
    )
    # Everything the flood held is given back.
    wait_until(
        lambda: metrics(server.port)["pi_server_pending_connections"] <= 1, 30, "the release"
    )


@contextlib.contextmanager
def proxy_process(backend_port: int):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.forwardingproxy", str(port), str(backend_port)]
        + [PROXY_SOURCE],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        yield port
    finally:
        process.terminate()
        process.wait(30)


def partial_upgrade(port: int, source: str, forwarded: str | None = None) -> socket.socket:
    """A socket that sent an upgrade request's first lines, not its end."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    request = upgrade_request(
        headers=[f"Authorization: Bearer {TOKEN}"]
        + ([f"X-Forwarded-For: {forwarded}"] if forwarded else [])
    )
    s.sendall(request[:-2])
    return s


def test_behind_a_trusted_proxy_clients_are_themselves_and_others_cannot_pretend(server):
    with proxy_process(server.port) as proxy:
        # 100 clients reconnect at once through the proxy: the server sees 100 requests
        # arriving from one address, six times --max-pending-per-address (and, while it
        # is asked, the /metrics request).
        clients = [
            partial_upgrade(proxy, f"127.2.0.{n}", forwarded="203.0.113.66") for n in range(1, 101)
        ]
        wait_until(
            lambda: metrics(server.port)["pi_server_pending_connections"] >= 100 + 1,
            30,
            "the proxy's 100 connections",
        )
        for s in clients:
            s.sendall(b"\r\n")
        statuses = [status_of(read_head(s)) for s in clients]
        assert statuses == [101] * 100
        log = server.log()
        for n in range(1, 101):
            # The client the proxy saw, not what the client claimed (203.0.113.66).
            assert re.search(rf"opened from 127\.2\.0\.{n} \(via tcp4?:{PROXY_SOURCE}:", log)
        assert "opened from 203.0.113.66" not in log
        for s in clients:
            s.close()

    # Straight to the server, an untrusted peer's X-Forwarded-For is its own word: the
    # limit counts it by its address, and the log names that address.
    held = [partial_upgrade(server.port, "127.3.0.1", f"10.9.8.{n}") for n in range(16)]
    extra = socket.create_connection(
        ("127.0.0.1", server.port), timeout=30, source_address=("127.3.0.1", 0)
    )
    answer = read_head(extra)
    assert status_of(answer) == 503 and b"too_many_connections" in answer
    for s in [*held, extra]:
        s.close()
    claimed = socket.create_connection(
        ("127.0.0.1", server.port), timeout=30, source_address=("127.3.0.2", 0)
    )
    claimed.sendall(upgrade_request(headers=["X-Forwarded-For: 10.9.8.7"]))
    assert status_of(read_head(claimed)) == 401
    claimed.close()
    trusted_claim = open_websocket(
        server.port, headers=[f"Authorization: Bearer {TOKEN}", "X-Forwarded-For: 10.9.8.8"]
    )
    trusted_claim.close()
    wait_until(lambda: "refused tcp4:127.3.0.2" in server.log(), 30, "the refusal's log line")
    log = server.log()
    assert "10.9.8." not in log
    assert re.search(r"opened from tcp4:127\.0\.0\.1:\d+ device", log)


@pytest.fixture
def ipv6_subnet():
    """Every address of one /64 bindable on loopback (an AnyIP route), for the test."""
    if sys.platform != "linux" or not hasattr(socket, "AF_INET6"):
        pytest.skip("needs Linux with IPv6")
    route = ["local", f"{IPV6_NET}::/64", "dev", "lo"]
    try:
        added = subprocess.run(
            ["ip", "-6", "route", "add", *route], capture_output=True, timeout=30
        )
    except FileNotFoundError:
        pytest.skip("no ip command")
    if added.returncode != 0 and b"File exists" not in added.stderr:
        pytest.skip(f"cannot route an IPv6 /64 to loopback (root needed): {added.stderr!r}")
    yield
    subprocess.run(["ip", "-6", "route", "del", *route], capture_output=True, timeout=30)


def test_one_ipv6_64_is_one_address(ipv6_subnet, tmp_path):
    process = ServerProcess(
        tmp_path, "--auth-token", TOKEN, host="::1", nofile=NOFILE, backlog=BACKLOG
    ).start()
    try:
        # 2,000 addresses, all of one /64: one address for the per-address limit.
        sources = [f"{IPV6_NET}::{n:x}:{n * 7919 % 65536:x}" for n in range(1, SOCKETS + 1)]
        sockets = flood(socket.AF_INET6, sources, process.port, "::1")
        try:
            wait_until(
                lambda: refusals(metrics(process.port, "::1"), "too_many_pending") >= 1000,
                30,
                "the flood",
            )
            served_meanwhile(process.port, "::1")
            samples = metrics(process.port, "::1")
        finally:
            for s in sockets:
                s.close()
        assert samples["pi_server_pending_connections"] <= 16 + 1
        print("IPv6 flood from one /64:", shown(samples))
    finally:
        process.stop()
