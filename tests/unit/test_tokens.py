import hmac
import json
import os
import stat

import pytest
from twisted.logger import Logger, LogLevel

from piserver.security import tokens
from piserver.security.scopes import ALL_SCOPES, Grant, Scope
from piserver.security.tokens import (
    DeviceTokenStore,
    TokenError,
    load_or_create_server_token,
    tokens_match,
)


def capturing_logger():
    events = []
    return Logger(observer=events.append), events


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def everything_logged(events):
    """All text and field values of the captured events, for leak checks."""
    return repr(
        [{key: value for key, value in event.items() if key != "log_logger"} for event in events]
    )


# server token


def test_explicit_token_wins_and_touches_no_file(tmp_path):
    assert load_or_create_server_token(tmp_path, " from-option\n") == ("from-option", "option")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("explicit", ["", "  \n"])
def test_empty_explicit_token_is_refused(tmp_path, explicit):
    with pytest.raises(TokenError, match="empty"):
        load_or_create_server_token(tmp_path, explicit)


def test_token_is_generated_stored_private_and_reused(tmp_path):
    log, events = capturing_logger()
    token, source = load_or_create_server_token(tmp_path, log=log)
    assert source == "generated"
    # 32 random bytes in URL-safe base64, usable in ?token= as is.
    assert len(token) == 43
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    path = tmp_path / "server-token"
    assert path.read_text() == token + "\n"
    assert mode_of(path) == 0o600
    assert token not in everything_logged(events)
    assert load_or_create_server_token(tmp_path, log=log) == (token, "file")
    assert events == []


def test_generated_tokens_differ(tmp_path):
    first, _ = load_or_create_server_token(tmp_path)
    os.unlink(tmp_path / "server-token")
    second, _ = load_or_create_server_token(tmp_path)
    assert first != second


def test_token_file_is_stripped(tmp_path):
    path = tmp_path / "server-token"
    path.write_text("  my-token \r\n")
    os.chmod(path, 0o600)
    assert load_or_create_server_token(tmp_path) == ("my-token", "file")


def test_loose_token_file_is_used_with_a_warning(tmp_path):
    path = tmp_path / "server-token"
    path.write_text("loose-secret-token\n")
    os.chmod(path, 0o644)
    log, events = capturing_logger()
    assert load_or_create_server_token(tmp_path, log=log) == ("loose-secret-token", "file")
    assert [event["log_level"] for event in events] == [LogLevel.warn]
    assert events[0]["mode"] == "0644"
    assert "loose-secret-token" not in everything_logged(events)


def test_empty_token_file_is_replaced_by_a_generated_token(tmp_path):
    path = tmp_path / "server-token"
    path.write_text("\n")
    os.chmod(path, 0o600)
    log, events = capturing_logger()
    token, source = load_or_create_server_token(tmp_path, log=log)
    assert source == "generated"
    assert path.read_text() == token + "\n"
    assert [event["log_level"] for event in events] == [LogLevel.warn]


def test_undecodable_token_file_is_an_error_and_kept(tmp_path):
    path = tmp_path / "server-token"
    path.write_bytes(b"\xff\xfe secret")
    os.chmod(path, 0o600)
    with pytest.raises(TokenError) as raised:
        load_or_create_server_token(tmp_path)
    assert "secret" not in str(raised.value).replace(str(tmp_path), "")
    assert path.read_bytes() == b"\xff\xfe secret"


# tokens_match


def test_tokens_match():
    assert tokens_match("abc", "abc")
    assert not tokens_match("abd", "abc")
    assert not tokens_match("abcd", "abc")
    assert not tokens_match("", "abc")
    assert not tokens_match("é", "e")
    assert tokens_match("é", "é")


def test_an_empty_expected_token_matches_nothing():
    assert not tokens_match("", "")


def test_tokens_match_compares_in_constant_time(monkeypatch):
    calls = []
    real_compare = hmac.compare_digest

    def spy(first, second):
        calls.append((first, second))
        return real_compare(first, second)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert tokens_match("abc", "abc")
    assert not tokens_match("a", "abcdef")
    assert len(calls) == 2
    # Digests of equal length: the comparison reveals neither content nor length.
    assert all(len(first) == len(second) == 32 for first, second in calls)


# device tokens


class FakeClock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def device_path(tmp_path):
    return tmp_path / "device-tokens.json"


@pytest.fixture
def devices(device_path):
    return DeviceTokenStore(device_path, FakeClock(), Logger(observer=lambda event: None))


def test_add_returns_a_token_that_verifies(devices):
    token = devices.add("phone")
    assert len(token) == 43
    assert devices.verify(token) == "phone"


def test_list_gives_names_creation_times_and_grants_only(devices, device_path):
    devices.add("phone")
    devices._clock.now += 3600
    devices.add("laptop", {Scope.READ}, ["r1"], own_sessions=True)
    assert devices.list() == [
        {
            "name": "laptop",
            "createdAt": "2023-11-14T23:13:20Z",
            "grant": Grant("laptop", frozenset({Scope.READ}), frozenset({"r1"}), True),
        },
        {"name": "phone", "createdAt": "2023-11-14T22:13:20Z", "grant": Grant("phone")},
    ]
    assert devices.names() == frozenset({"phone", "laptop"})


def test_the_file_is_private_and_holds_only_hashes(devices, device_path):
    token = devices.add("phone")
    assert mode_of(device_path) == 0o600
    text = device_path.read_text()
    assert token not in text
    document = json.loads(text)
    entry = document["devices"]["phone"]
    assert document["version"] == 1
    assert set(entry) == {"createdAt", "hash", "scopes", "ownSessions"}
    assert entry["hash"].startswith("sha256:")
    assert len(entry["hash"]) == len("sha256:") + 64


def test_wrong_tokens_do_not_verify(devices, device_path):
    token = devices.add("phone")
    stored_hash = json.loads(device_path.read_text())["devices"]["phone"]["hash"]
    assert devices.verify(token[:-1]) is None
    assert devices.verify(token + "x") is None
    assert devices.verify("") is None
    assert devices.verify(stored_hash) is None
    assert devices.verify(stored_hash.removeprefix("sha256:")) is None


def test_each_device_has_its_own_token(devices):
    phone = devices.add("phone")
    laptop = devices.add("laptop")
    assert phone != laptop
    assert devices.verify(phone) == "phone"
    assert devices.verify(laptop) == "laptop"


def test_verify_compares_every_entry(devices, monkeypatch):
    first = devices.add("a")
    devices.add("b")
    devices.add("c")
    calls = []
    real_compare = hmac.compare_digest

    def spy(one, other):
        calls.append(one)
        return real_compare(one, other)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert devices.verify(first) == "a"
    assert len(calls) == 3


def test_revoke(devices):
    token = devices.add("phone")
    assert devices.revoke("phone") is True
    assert devices.verify(token) is None
    assert devices.list() == []
    assert devices.revoke("phone") is False


def test_a_revoked_name_can_be_added_again_with_a_new_token(devices):
    old = devices.add("phone")
    devices.revoke("phone")
    new = devices.add("phone")
    assert new != old
    assert devices.verify(old) is None
    assert devices.verify(new) == "phone"


def test_duplicate_name_is_refused(devices):
    token = devices.add("phone")
    with pytest.raises(TokenError, match="already"):
        devices.add("phone")
    assert devices.verify(token) == "phone"


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "slash/name", "ünï", "a\n"])
def test_invalid_names_are_refused(devices, device_path, name):
    with pytest.raises(TokenError, match="device name"):
        devices.add(name)
    assert not device_path.exists()


@pytest.mark.parametrize("name", ["a", "A" * 64, "my-phone_2.0", "..", "-"])
def test_valid_names(devices, name):
    assert devices.verify(devices.add(name)) == name


def test_changes_from_another_process_are_seen(devices, device_path):
    other = DeviceTokenStore(device_path, FakeClock(), Logger(observer=lambda event: None))
    assert devices.list() == []
    token = other.add("phone")
    assert devices.verify(token) == "phone"
    other.revoke("phone")
    assert devices.verify(token) is None
    assert devices.names() == frozenset()


def test_no_file_means_no_devices(devices, device_path):
    assert devices.list() == []
    assert devices.verify("anything") is None
    assert not device_path.exists()


def test_corrupt_file_is_moved_aside_and_fails_closed(device_path):
    log, events = capturing_logger()
    devices = DeviceTokenStore(device_path, FakeClock(), log)
    token = devices.add("phone")
    device_path.write_text('{"version": 1, "devices": {')
    assert devices.verify(token) is None
    assert (device_path.parent / "device-tokens.json.corrupt-1").exists()
    assert LogLevel.critical in [event["log_level"] for event in events]
    assert token not in everything_logged(events)
    # A new token can still be added; the old file stays aside.
    assert devices.verify(devices.add("laptop")) == "laptop"


@pytest.mark.parametrize(
    "document", [{"version": 2, "devices": {}}, {"version": 1, "devices": []}, {"devices": {}}]
)
def test_unknown_file_shape_is_moved_aside(device_path, document):
    device_path.write_text(json.dumps(document))
    os.chmod(device_path, 0o600)
    log, events = capturing_logger()
    devices = DeviceTokenStore(device_path, FakeClock(), log)
    assert devices.list() == []
    assert json.loads((device_path.parent / "device-tokens.json.corrupt-1").read_text()) == document
    assert [event["log_level"] for event in events] == [LogLevel.critical]


def test_loose_file_mode_is_warned_about(devices, device_path):
    devices.add("phone")
    os.chmod(device_path, 0o644)
    log, events = capturing_logger()
    other = DeviceTokenStore(device_path, FakeClock(), log)
    assert other.names() == frozenset({"phone"})
    assert [event["log_level"] for event in events] == [LogLevel.warn]
    assert events[0]["mode"] == "0644"


def test_logs_name_the_device_never_the_token(device_path):
    log, events = capturing_logger()
    devices = DeviceTokenStore(device_path, FakeClock(), log)
    token = devices.add("phone")
    devices.verify(token)
    devices.revoke("phone")
    assert [event["device"] for event in events] == ["phone", "phone"]
    assert token not in everything_logged(events)
    assert tokens._token_hash(token) not in everything_logged(events)


def test_a_token_carries_its_scopes_and_reach(devices, device_path):
    token = devices.add("tablet", {Scope.READ, Scope.APPROVE}, ["r1", "r2"], own_sessions=True)
    other = devices.add("phone")
    found = devices.find(token)
    assert (found.name, found.token_id) == devices.identify(token)
    assert found.grant == Grant(
        "tablet", frozenset({Scope.READ, Scope.APPROVE}), frozenset({"r1", "r2"}), True
    )
    # Default: every scope, every session.
    assert devices.find(other).grant == Grant("phone", ALL_SCOPES)
    assert devices.find("not a token") is None
    entry = json.loads(device_path.read_text())["devices"]["tablet"]
    assert entry["scopes"] == ["read", "approve"]
    assert entry["repos"] == ["r1", "r2"]
    assert entry["ownSessions"] is True


def test_a_token_needs_a_scope(devices):
    with pytest.raises(TokenError, match="scope"):
        devices.add("phone", set())


def test_tokens_from_before_scopes_hold_every_scope(devices, device_path):
    # A device-tokens.json as earlier versions wrote it keeps working, with the default.
    token = tokens.generate_token()
    device_path.write_text(
        json.dumps(
            {
                "version": 1,
                "devices": {
                    "old": {"createdAt": "2023-11-14T22:13:20Z", "hash": tokens._token_hash(token)}
                },
            }
        )
    )
    os.chmod(device_path, 0o600)
    assert devices.find(token).grant == Grant("old", ALL_SCOPES)


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"scopes": "read"}, Grant("x", frozenset())),
        ({"scopes": ["read", "admin"]}, Grant("x", frozenset({Scope.READ}))),
        ({"repos": "r1"}, Grant("x", repos=frozenset())),
        ({"ownSessions": "yes"}, Grant("x", own_sessions=True)),
    ],
)
def test_malformed_grants_give_less_not_more(entry, expected):
    assert tokens.grant_from_entry("x", {"hash": "sha256:0", **entry}) == expected
