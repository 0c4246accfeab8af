"""
Attacks on a running ``twistd piserver`` made as an outsider or a token holder
makes them: raw sockets, real requests, the server's real log file.
"""

from urllib.parse import quote

import pytest

from piserver.devices import CLOSE_REVOKED
from piserver.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore
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
