"""``pi-server token add | list | revoke``, run in-process through the console script."""

import json
import os
import re
import stat

import pytest

from piserver.cli import main
from piserver.security.scopes import Grant, Scope
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def token_cli(capsys, *args):
    status = main(["token", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_add_prints_the_token_once_and_stores_only_its_hash(capsys, data_dir):
    status, out, err = token_cli(capsys, "add", "phone", "--data-dir", str(data_dir))
    assert status == 0
    token = out.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert token not in err and "shown only this once" in err
    stored = (data_dir / DEVICE_TOKENS_FILE).read_text()
    assert token not in stored
    assert stat.S_IMODE((data_dir / DEVICE_TOKENS_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    # The server's store accepts it.
    store = DeviceTokenStore(data_dir / DEVICE_TOKENS_FILE, clock=lambda: 0.0)
    assert store.verify(token) == "phone"


def test_list_shows_names_and_times_never_hashes(capsys, data_dir):
    token_cli(capsys, "add", "phone", "--data-dir", str(data_dir))
    token_cli(capsys, "--data-dir", str(data_dir), "add", "laptop-2")
    status, out, err = token_cli(capsys, "list", "--data-dir", str(data_dir))
    assert status == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["laptop-2", "phone"]
    for line in lines:
        assert re.fullmatch(
            r"[\w.-]+ +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  read,prompt,approve,ship,manage", line
        )
    hashes = [
        device["hash"].split(":")[1]
        for device in json.loads((data_dir / DEVICE_TOKENS_FILE).read_text())["devices"].values()
    ]
    assert not any(h in out + err for h in hashes)
    assert "sha256" not in out + err


def test_revoke(capsys, data_dir):
    _, out, _ = token_cli(capsys, "add", "phone", "--data-dir", str(data_dir))
    token = out.strip()
    status, out, err = token_cli(capsys, "revoke", "phone", "--data-dir", str(data_dir))
    assert status == 0 and "revoked" in err
    assert token_cli(capsys, "list", "--data-dir", str(data_dir))[1] == ""
    store = DeviceTokenStore(data_dir / DEVICE_TOKENS_FILE, clock=lambda: 0.0)
    assert store.verify(token) is None
    status, out, err = token_cli(capsys, "revoke", "phone", "--data-dir", str(data_dir))
    assert status == 1 and "no device named 'phone'" in err


def test_data_dir_defaults_like_the_server(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PI_SERVER_DATA_DIR", str(tmp_path / "from-env"))
    assert token_cli(capsys, "add", "phone")[0] == 0
    assert (tmp_path / "from-env" / DEVICE_TOKENS_FILE).exists()
    monkeypatch.delenv("PI_SERVER_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert token_cli(capsys, "add", "tablet")[0] == 0
    assert (tmp_path / "xdg" / "pi-server" / DEVICE_TOKENS_FILE).exists()


def test_list_of_an_empty_or_missing_data_dir(capsys, data_dir):
    status, out, err = token_cli(capsys, "list", "--data-dir", str(data_dir))
    assert (status, out) == (0, "")
    assert "no device tokens" in err
    assert not data_dir.exists()  # list and revoke create nothing


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give a command"),
        (["add"], "Wrong number of arguments"),
        (["add", "a", "b"], "Wrong number of arguments"),
        (["revoke"], "Wrong number of arguments"),
        (["rename", "x"], "rename"),
        (["list", "--bogus"], "bogus"),
        (["add", "x", "--scope", "read,admin"], "not a scope: admin"),
        (["add", "x", "--scope", ","], "at least one scope"),
        (["add", "x", "--repo", " "], "give a repository id"),
    ],
)
def test_usage_errors(capsys, data_dir, args, message):
    status, out, err = token_cli(capsys, *args)
    assert status == 2
    assert message in err and "Usage: pi-server token" in err
    assert out == ""


@pytest.mark.parametrize(
    "name, message",
    [
        ("bad name", "a device name is"),
        ("x" * 65, "a device name is"),
        ("phone", "already a device named phone"),
    ],
)
def test_refused_names(capsys, data_dir, name, message):
    token_cli(capsys, "add", "phone", "--data-dir", str(data_dir))
    status, out, err = token_cli(capsys, "add", name, "--data-dir", str(data_dir))
    assert status == 1
    assert message in err
    assert out == ""


def test_unusable_data_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    status, out, err = token_cli(capsys, "add", "phone", "--data-dir", str(blocker / "data"))
    assert status == 1 and "not usable" in err


def test_store_warnings_reach_stderr(capsys, data_dir):
    token_cli(capsys, "add", "phone", "--data-dir", str(data_dir))
    os.chmod(data_dir / DEVICE_TOKENS_FILE, 0o644)
    status, out, err = token_cli(capsys, "list", "--data-dir", str(data_dir))
    assert status == 0 and "looser than 0600" in err


def test_add_with_scopes_and_reach(capsys, data_dir):
    status, out, _ = token_cli(
        capsys,
        "add",
        "relay",
        "--scope",
        "approve,read",
        "--repo",
        "acme/app",
        "--data-dir",
        str(data_dir),
        "--repo=local-x",
        "--own-sessions",
    )
    assert status == 0
    store = DeviceTokenStore(data_dir / DEVICE_TOKENS_FILE, clock=lambda: 0.0)
    grant = store.find(out.strip()).grant
    assert grant == Grant(
        "relay", frozenset({Scope.READ, Scope.APPROVE}), frozenset({"acme/app", "local-x"}), True
    )
    _, out, _ = token_cli(capsys, "list", "--data-dir", str(data_dir))
    assert out.split("  ", 2)[2] == "read,approve  repos: acme/app, local-x  own sessions\n"
