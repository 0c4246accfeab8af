"""
Attacks on a running ``twistd piserver`` made as an outsider or a token holder
makes them: raw sockets, real requests, the server's real log file.
"""

import json
import socket
from urllib.parse import quote

import pytest

from piserver.security.revocation import CLOSE_REVOKED
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore
from tests.support.serverprocess import (
    ServerProcess,
    http_exchange,
    open_websocket,
    read_close,
    status_of,
    upgrade_request,
)

SERVER_TOKEN = "attack-test-server-token"


@pytest.fixture
def server(tmp_path):
    started = []

    def start(*args, **kwargs):
        process = ServerProcess(tmp_path, *args, **kwargs).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def trickle_until_cut(sock, first: bytes) -> int:
    """Send ``first``, then a byte at a time (each waits for an answer up to the socket's
    timeout) until the server closes the connection; how many bytes were sent. Fails if
    80 bytes (20 s at 0.25 s) go through: ten times what the server may allow."""
    sent = 0
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        while sent < 80:
            sock.sendall(first if sent == 0 else b"X")
            sent += 1
            try:
                if sock.recv(1) == b"":
                    raise ConnectionResetError("closed by the server")
            except TimeoutError:
                pass
    return sent


def test_no_credential_of_an_upgrade_reaches_the_log(server, tmp_path):
    process = server("--auth-token", SERVER_TOKEN)
    device_token = process.token_add("phone")
    wrong_token = "not-a-token-but-still-secret-xyz"
    percent_encoded = "".join(f"%{b:02X}" for b in device_token.encode())
    attempts = [
        upgrade_request(f"/rpc?token={device_token}"),
        upgrade_request(f"/rpc?token={percent_encoded}"),
        upgrade_request("/rpc", headers=[f"Authorization: Bearer {device_token}"]),
        upgrade_request(f"/rpc?x=1&token={quote(wrong_token)}"),
        upgrade_request("/rpc", headers=[f"Authorization: Bearer {wrong_token}"]),
        upgrade_request(f"/rpc?token={SERVER_TOKEN}"),
    ]
    statuses = [status_of(http_exchange(process.port, attempt)) for attempt in attempts]
    assert statuses == [101, 101, 101, 401, 401, 101]
    # Not an upgrade at all, and a path that does not exist.
    http_exchange(process.port, f"GET /rpc?token={device_token} HTTP/1.0\r\n\r\n".encode())
    http_exchange(process.port, f"GET /x?token={device_token} HTTP/1.0\r\n\r\n".encode())
    process.stop()

    log = process.log()
    assert "listening on 127.0.0.1" in log
    for secret in (
        device_token,
        percent_encoded,
        wrong_token,
        quote(wrong_token),
        SERVER_TOKEN,
        device_token[:16],
        percent_encoded[:24],
    ):
        assert secret not in log
    assert "#debug]" not in log


def test_a_revoked_token_loses_its_connection_when_its_name_is_given_again(server, tmp_path):
    process = server("--auth-token", SERVER_TOKEN)
    old_token = process.token_add("phone")
    old = open_websocket(process.port, headers=[f"Authorization: Bearer {old_token}"])
    # Revoked and added again at once, from outside the server, as two quick commands would.
    store = DeviceTokenStore(process.data_dir / DEVICE_TOKENS_FILE, clock=lambda: 0.0)
    assert store.revoke("phone")
    new_token = store.add("phone")
    new = open_websocket(process.port, headers=[f"Authorization: Bearer {new_token}"])
    assert read_close(old) == CLOSE_REVOKED
    new.settimeout(0.5)
    with pytest.raises(TimeoutError):
        new.recv(1)
    old.close()
    new.close()


def connect_from(source: str, port: int, timeout: float = 10) -> socket.socket:
    """A socket to the server from another loopback address (all of 127/8 is loopback)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    return s


def test_a_trickled_upgrade_request_is_cut_off_after_the_handshake_timeout(server):
    process = server("--auth-token", SERVER_TOKEN, "--handshake-timeout", "2")
    trickling = socket.create_connection(("127.0.0.1", process.port), timeout=0.25)
    trickling.sendall(b"GET /rpc HTTP/1.1\r\n")
    # A byte every 0.25 s keeps an idle timer from ever firing; the request as a whole is
    # still cut off after the 2 s the handshake may take.
    assert trickle_until_cut(trickling, b"X") < 40
    trickling.close()


def test_one_address_cannot_hold_more_than_its_share_of_pending_requests(server):
    process = server("--auth-token", SERVER_TOKEN, "--max-pending-per-address", "8")
    # A slowloris from 127.0.0.2: sockets that never finish their upgrade request.
    slow = [connect_from("127.0.0.2", process.port) for _ in range(8)]
    for s in slow:
        s.sendall(b"GET /rpc HTTP/1.1\r\n")
    # More from that address are refused at once.
    extra = connect_from("127.0.0.2", process.port)
    answer = extra.recv(65536)
    assert status_of(answer) == 503 and b"too_many_connections" in answer
    # Meanwhile a real client from another address gets in.
    real = open_websocket(process.port, headers=[f"Authorization: Bearer {SERVER_TOKEN}"])
    for s in [*slow, extra, real]:
        s.close()


@pytest.mark.parametrize("path", ["/", "/rpc", "/health", "/nowhere"])
def test_request_bodies_are_refused_before_they_are_read(server, path):
    process = server("--auth-token", SERVER_TOKEN)
    for framing in ("content-length: 200000000", "transfer-encoding: chunked"):
        with socket.create_connection(("127.0.0.1", process.port), timeout=10) as s:
            s.sendall(
                f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{framing}\r\n\r\n".encode()
                + b"x" * 65536
            )
            # Answered without the server waiting for (or storing) the 200 MB.
            answer = s.recv(65536)
        assert status_of(answer) == 413, answer
        assert b'"body_too_large"' in answer


def test_refusals_and_bad_frames_are_counted_not_logged_one_by_one(server):
    process = server("--auth-token", SERVER_TOKEN)
    before = len(process.log().splitlines())
    for _ in range(100):
        assert status_of(http_exchange(process.port, upgrade_request("/rpc?token=wrong"))) == 401
    for _ in range(50):
        s = open_websocket(process.port, headers=[f"Authorization: Bearer {SERVER_TOKEN}"])
        s.sendall(b"\x81\x05hello")  # unmasked: a protocol violation
        assert read_close(s) == 1002
        s.close()
    metrics = socket_rest(process.port, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert b'pi_server_refusals_total{kind="unauthorized"} 100.0' in metrics
    assert b'pi_server_refusals_total{kind="bad_frame"} 50.0' in metrics
    process.stop()
    lines = process.log().splitlines()[before:]
    refusal_lines = [line for line in lines if "refus" in line or "failing" in line]
    # A few lines per kind, not one (or three) per attempt; the 50 accepted connections
    # still log their opening and closing.
    assert len(refusal_lines) <= 25, "\n".join(refusal_lines)
    assert len(lines) < 150 + 25


def socket_rest(port: int, request: bytes) -> bytes:
    """The whole answer to an HTTP/1.0 request (until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_dns_rebinding_page_cannot_open_rpc(server):
    process = server("--no-auth")
    port = process.port
    rebound = f"rebind.evil.example:{port}"
    # The browser of someone visiting the attacker's page, whose name now points to 127.0.0.1.
    attack = upgrade_request(host=rebound, headers=[f"Origin: http://{rebound}"])
    assert status_of(http_exchange(port, attack)) == 403
    # No Origin at all (not a browser), but a Host this server is not known by, on loopback.
    assert status_of(http_exchange(port, upgrade_request(host=rebound))) == 403
    # The server's own names still work.
    for name in ("localhost", "127.0.0.1"):
        own = upgrade_request(host=f"{name}:{port}", headers=[f"Origin: http://{name}:{port}"])
        assert status_of(http_exchange(port, own)) == 101


def test_get_rpc_without_upgrade_answers_the_json_error(server):
    process = server("--auth-token", SERVER_TOKEN)
    answer = socket_rest(process.port, b"GET /rpc HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(head) == 426
    assert json.loads(body)["error"]["code"] == "upgrade_required"
    assert b"autobahn" not in answer.lower()
    upgraded = http_exchange(
        process.port, upgrade_request(headers=[f"Authorization: Bearer {SERVER_TOKEN}"])
    )
    assert b"autobahn" not in upgraded.lower()


def test_kept_alive_connections_are_bounded_per_request_not_while_idle(server):
    process = server(
        "--auth-token", SERVER_TOKEN, "--handshake-timeout", "2", "--max-pending-per-address", "4"
    )
    # A browser's idle kept-alive connections are not requests still arriving.
    idle = []
    for _ in range(8):
        s = socket.create_connection(("127.0.0.1", process.port), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status_of(s.recv(65536)) == 200
        idle.append(s)
    assert status_of(http_exchange(process.port, b"GET /health HTTP/1.0\r\n\r\n")) == 200
    # The next request on a kept-alive connection is bounded in time like the first.
    trickling = idle[0]
    trickling.settimeout(0.25)
    assert trickle_until_cut(trickling, b"G") < 40
    for s in idle:
        s.close()
