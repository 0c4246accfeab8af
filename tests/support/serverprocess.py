"""
pi-server as a process of its own (``twistd -n piserver``), for attacks made the
way an outsider makes them: over raw sockets, against a server that writes its
log file and can be killed.
"""

import base64
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.piagent import VERSION_ONLY_PI, pi_option
from tests.support.processes import free_port, health_ok, wait_until

TWISTD = str(Path(sys.executable).parent / "twistd")
PI_SERVER = str(Path(sys.executable).parent / "pi-server")


class ServerProcess:
    """``twistd -n piserver`` on a free loopback port, logging to ``log_file``; over
    ``data_dir`` (``directory/data`` unless given). It can be started again after a stop
    or a kill, on the same port and data dir, appending to the same log."""

    @classmethod
    def with_real_pi(cls, directory: Path, agent_dir, pi_binary, *args, environ=None):
        """A server of the real pi in ``agent_dir`` (its data dir), with ``args``;
        ``environ`` added to the agent dir's environment."""
        return cls(
            directory,
            *args,
            pi=pi_option(pi_binary),
            data_dir=agent_dir.path,
            environ={**agent_dir.environment(), **(environ or {})},
        )

    def __init__(
        self,
        directory: Path,
        *args,
        pi: str = VERSION_ONLY_PI,
        environ=None,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        nofile: int | None = None,
        backlog: int | None = None,
    ):
        self.directory = directory
        self.host = host
        self.nofile = nofile
        self.backlog = backlog
        self.data_dir = data_dir or directory / "data"
        self.log_file = directory / "piserver.log"
        self.port = free_port()
        self.args = list(args)
        self.pi = pi
        self.environ = {**os.environ, "HOME": str(directory), **(environ or {})}
        self.process = None

    def start(self) -> "ServerProcess":
        self.process = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--logfile",
                str(self.log_file),
                "piserver",
                "--port",
                (
                    f"tcp6:{self.port}:interface={self.host.replace(':', chr(92) + ':')}"
                    if ":" in self.host
                    else f"tcp:{self.port}:interface={self.host}"
                )
                + (f":backlog={self.backlog}" if self.backlog else ""),
                "--data-dir",
                str(self.data_dir),
                "--pi",
                self.pi,
                *self.args,
            ],
            cwd=self.directory,
            env=self.environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=None if self.nofile is None else self._limit_files,
        )
        wait_until(
            lambda: health_ok(self.port, self.host) or self.process.poll() is not None,
            60,
            "pi-server to answer /health",
        )
        assert self.process.poll() is None, self.log()
        return self

    def _limit_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def stop(self) -> None:
        """SIGTERM, and wait until the log is complete."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                # Not left running after the test: its port and files are the next test's.
                self.process.kill()
                self.process.wait(60)
                raise AssertionError("pi-server did not stop within 60 s of SIGTERM") from None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)

    def kill_agents(self) -> None:
        """Kill the agents a killed server left behind (each leads its process group)."""
        for pid in re.findall(r"started pid=(\d+)", self.log()):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def token_add(self, name: str) -> str:
        """``pi-server token add``, in another process as a user would run it."""
        made = subprocess.run(
            [PI_SERVER, "token", "add", "--data-dir", str(self.data_dir), name],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env=self.environ,
        )
        return made.stdout.split()[0]

    def token_revoke(self, name: str) -> None:
        subprocess.run(
            [PI_SERVER, "token", "revoke", "--data-dir", str(self.data_dir), name],
            capture_output=True,
            check=True,
            timeout=60,
            env=self.environ,
        )


def upgrade_request(path: str = "/rpc", host: str = "127.0.0.1", headers=()) -> bytes:
    """A WebSocket upgrade request as a client writes it."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` on a new socket; the answer's head (see ``read_head``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        return read_head(s)


def read_head(s: socket.socket) -> bytes:
    """What ``s`` receives until a blank line (an HTTP answer's head) or its close."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def status_of(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def open_websocket(
    port: int, path: str = "/rpc", headers=(), timeout: float = 30, host: str = "127.0.0.1"
):
    """A socket on which the upgrade was answered 101, ready for frames."""
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(upgrade_request(path, host=f"[{host}]" if ":" in host else host, headers=headers))
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError(f"closed during the upgrade: {answer!r}")
        answer += chunk
    assert status_of(answer) == 101, answer
    return s


def read_close(s: socket.socket) -> int | None:
    """Read server frames until a close frame; its code (None if the socket just closed)."""
    while True:
        head = _read_exactly(s, 2)
        if head is None:
            return None
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(_read_exactly(s, 2), "big")
        elif length == 127:
            length = int.from_bytes(_read_exactly(s, 8), "big")
        payload = _read_exactly(s, length) if length else b""
        if head[0] & 0x0F == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None


def _read_exactly(s: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class RawRpc:
    """A minimal blocking /rpc client on a raw socket: requests out, frames in."""

    def __init__(self, port: int, token: str, timeout: float = 60, host: str = "127.0.0.1"):
        self.socket = open_websocket(
            port, headers=[f"Authorization: Bearer {token}"], timeout=timeout, host=host
        )
        self._ids = iter(range(1, 1_000_000))

    def send(self, method: str, params=None, session_id=None, request_id=None) -> str:
        request_id = request_id or f"r{next(self._ids)}"
        envelope = {
            "v": 1,
            "kind": "request",
            "id": request_id,
            "method": method,
            "params": params or {},
        }
        if session_id is not None:
            envelope["sessionId"] = session_id
        data = json.dumps(envelope).encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            head = bytes([0x81, 0x80 | n])
        elif n < 65536:
            head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
        self.socket.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        return request_id

    def response(self, request_id: str) -> dict:
        """Read frames until the response to ``request_id``."""
        while True:
            frame = self._frame()
            if frame.get("kind") == "response" and frame.get("id") == request_id:
                return frame

    def call(self, method: str, params=None, session_id=None) -> dict:
        answer = self.response(self.send(method, params, session_id))
        assert answer["ok"], answer
        return answer["result"]

    def _frame(self) -> dict:
        head = _read_exactly(self.socket, 2)
        if head is None:
            raise ConnectionError("the server closed the connection")
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(_read_exactly(self.socket, 2), "big")
        elif length == 127:
            length = int.from_bytes(_read_exactly(self.socket, 8), "big")
        payload = _read_exactly(self.socket, length) if length else b""
        if head[0] & 0x0F == 0x1:
            return json.loads(payload)
        return {}

    def close(self) -> None:
        self.socket.close()
