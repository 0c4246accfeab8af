"""
Revoking a device token closes the connections made with it at once (and within
a second at the latest), also when another process (``pi-server token revoke``)
did it, and also when a device of the same name is added again.
"""

import attr
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from piserver.cli import main
from piserver.security.auth import Authenticator
from piserver.security.revocation import CLOSE_REVOKED, RevocationWatcher
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore
from tests.support.wsharness import MemoryServer, hello_frame


@attr.s
class FakeConnection:
    connection_id: str = attr.ib()
    device: str | None = attr.ib()
    device_token_id: str | None = attr.ib(default=None)
    closed: list = attr.ib(factory=list)

    def close(self, code, reason):
        self.closed.append((code, reason))


def make_store(tmp_path):
    return DeviceTokenStore(tmp_path / DEVICE_TOKENS_FILE, clock=lambda: 1_700_000_000.0)


def test_revoked_devices_lose_their_connections_within_a_second(tmp_path):
    store = make_store(tmp_path)
    phone_id = store.identify(store.add("phone"))[1]
    tablet_id = store.identify(store.add("tablet"))[1]
    phone, phone_again = (
        FakeConnection("c1", "phone", phone_id),
        FakeConnection("c2", "phone", phone_id),
    )
    tablet, server_token = FakeConnection("c3", "tablet", tablet_id), FakeConnection("c4", None)
    connections = [phone, phone_again, tablet, server_token]
    clock = Clock()
    watcher = RevocationWatcher(store, lambda: connections, clock)
    watcher.startService()
    assert not any(c.closed for c in connections)

    # Another process revokes: its own store instance writes the file.
    assert make_store(tmp_path).revoke("phone")
    clock.advance(0.5)
    assert phone.closed == []
    clock.advance(0.5)
    assert phone.closed == [(CLOSE_REVOKED, "device token revoked")]
    assert phone_again.closed == [(CLOSE_REVOKED, "device token revoked")]
    assert tablet.closed == [] and server_token.closed == []

    # A connection still closing is not told twice.
    clock.advance(1)
    assert len(phone.closed) == 1
    watcher.stopService()
    assert clock.getDelayedCalls() == []


def test_check_closes_at_once_and_counts(tmp_path):
    store = make_store(tmp_path)
    connection = FakeConnection("c1", "phone", store.identify(store.add("phone"))[1])
    watcher = RevocationWatcher(store, lambda: [connection], Clock())
    assert watcher.check() == 0
    store.revoke("phone")
    assert watcher.check() == 1
    assert watcher.check() == 0


def test_a_revocation_is_told_even_with_no_connection_open(tmp_path):
    # Web Push subscriptions of a revoked token go at once (service.py: on_revoked).
    store = make_store(tmp_path)
    store.add("phone")
    tablet_id = store.identify(store.add("tablet"))[1]
    told = []
    watcher = RevocationWatcher(store, lambda: [], Clock(), on_revoked=told.append)
    watcher.check()
    store.add("watch")
    watcher.check()
    assert told == []
    store.revoke("phone")
    watcher.check()
    watcher.check()
    assert len(told) == 1 and tablet_id in told[0]


def test_corrupt_store_closes_every_device_connection(tmp_path):
    # The store fails closed: a corrupt file means no device token is valid.
    store = make_store(tmp_path)
    connection = FakeConnection("c1", "phone", store.identify(store.add("phone"))[1])
    watcher = RevocationWatcher(store, lambda: [connection], Clock())
    (tmp_path / DEVICE_TOKENS_FILE).write_text("{not json")
    assert watcher.check() == 1


def test_a_device_added_again_under_the_same_name_keeps_no_old_connection(tmp_path):
    store = make_store(tmp_path)
    old = FakeConnection("c1", "phone", store.identify(store.add("phone"))[1])
    watcher = RevocationWatcher(store, lambda: [old, new], Clock())
    other = make_store(tmp_path)
    assert other.revoke("phone")
    new = FakeConnection("c2", "phone", store.identify(other.add("phone"))[1])
    assert watcher.check() == 1
    assert old.closed == [(CLOSE_REVOKED, "device token revoked")] and new.closed == []


def test_a_failing_check_is_logged_and_the_watcher_keeps_going(tmp_path):
    class BrokenStore:
        calls = 0

        def token_ids(self):
            self.calls += 1
            raise OSError("disk on fire")

    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        store = BrokenStore()
        clock = Clock()
        watcher = RevocationWatcher(store, lambda: [FakeConnection("c1", "phone")], clock)
        watcher.startService()
        clock.advance(1)
        clock.advance(1)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert store.calls == 3
    assert any(e.get("log_failure") is not None and e["log_failure"].check(OSError) for e in logged)
    watcher.stopService()


def test_device_token_from_the_cli_opens_rpc_and_revoke_drops_it(tmp_path, capsys):
    data_dir = tmp_path / "data"
    assert main(["token", "add", "phone", "--data-dir", str(data_dir)]) == 0
    token = capsys.readouterr().out.strip()
    store = DeviceTokenStore(data_dir / DEVICE_TOKENS_FILE, clock=lambda: 0.0)
    server = MemoryServer(authenticator=Authenticator("server-token", store))

    client = server.open(f"ws://localhost:3141/rpc?token={token}")
    client.sendMessage(hello_frame())
    server.flush()
    assert client.received[-1]["ok"] is True
    (connection,) = server.hub.connections.values()
    assert connection.device == "phone"
    other = server.open(headers={"Authorization": "Bearer server-token"})
    assert other.opened

    watcher = RevocationWatcher(
        store, lambda: list(server.hub.connections.values()), server.reactor
    )
    watcher.startService()
    assert main(["token", "revoke", "phone", "--data-dir", str(data_dir)]) == 0
    server.advance(1)
    assert client.close_info is not None
    was_clean, code, reason = client.close_info
    assert code == CLOSE_REVOKED and reason == "device token revoked"
    assert [c.device for c in server.hub.connections.values()] == [None]
    assert other.close_info is None

    # The revoked token no longer opens /rpc.
    refused = server.open(f"ws://localhost:3141/rpc?token={token}")
    assert not refused.opened and "401" in refused.close_info[2]
    watcher.stopService()


@pytest_twisted.ensureDeferred
async def test_a_revocation_by_another_process_is_acted_on_without_waiting(tmp_path):
    from twisted.internet import reactor

    store = make_store(tmp_path)
    closed = defer.Deferred()

    class Connection(FakeConnection):
        def close(self, code, reason):
            closed.callback(code)

    connection = Connection("c1", "phone", store.identify(store.add("phone"))[1])
    # The clock never advances: only the change of the file can trigger the check.
    watcher = RevocationWatcher(
        store,
        lambda: [connection],
        Clock(),
        token_file=tmp_path / DEVICE_TOKENS_FILE,
        reactor=reactor,
    )
    watcher.startService()
    try:
        assert make_store(tmp_path).revoke("phone")
        assert await closed.addTimeout(10, reactor) == CLOSE_REVOKED
    finally:
        watcher.stopService()
