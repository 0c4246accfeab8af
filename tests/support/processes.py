"""Helpers for tests that run pi-server as a separate process (or watch what an agent does)."""

import socket
import time

import pytest
from twisted.internet import reactor, task


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


async def eventually(condition, what, timeout: float = 60) -> None:
    """Poll a condition of another process (or of files an agent writes), which cannot
    notify the test, while the reactor keeps running (the scripted LLM and the GitHub
    stand-in are served by it). ``what`` is text, or a callable giving it at the time out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what() if callable(what) else what}")
        await task.deferLater(reactor, 0.05, lambda: None)
