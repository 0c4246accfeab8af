"""Helpers for tests that run pi-server as a separate process."""

import socket
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_ok(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
            return b'"ok": true' in s.recv(4096)
    except OSError:
        return False


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll a condition of another process, which the test cannot be notified of."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
