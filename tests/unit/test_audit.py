"""The audit log (ops/audit.py) and ``pi-server audit`` (auditcli.py)."""

import json
import stat

import pytest

from piserver.cli import main
from piserver.ops.audit import AUDIT_FILE, AuditEntry, AuditLog, read_entries

# 2023-11-14T22:13:20Z
T0 = 1_700_000_000.0


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def test_each_decision_is_one_private_json_line(tmp_path):
    log = AuditLog(tmp_path / AUDIT_FILE, Clock())
    log.decided("phone", "session.commit", "s1", "acme/app", True, None)
    log.decided(None, "session.delete", "s1", None, False, "not_found")
    lines = (tmp_path / AUDIT_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "time": "2023-11-14T22:13:20.000Z",
            "device": "phone",
            "method": "session.commit",
            "sessionId": "s1",
            "repoId": "acme/app",
            "ok": True,
            "error": None,
        },
        {
            "time": "2023-11-14T22:13:20.000Z",
            "device": None,
            "method": "session.delete",
            "sessionId": "s1",
            "repoId": None,
            "ok": False,
            "error": "not_found",
        },
    ]
    assert stat.S_IMODE((tmp_path / AUDIT_FILE).stat().st_mode) == 0o600


def test_size_rotation_keeps_the_newest_files(tmp_path):
    path = tmp_path / AUDIT_FILE
    log = AuditLog(path, Clock(), max_bytes=400, keep=2)
    for n in range(20):
        log.decided("phone", "prompt", f"s{n}", None, True, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.log",
        "audit.log.1",
        "audit.log.2",
    ]
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    kept = [entry.session_id for entry in read_entries(path, keep=2)]
    # The newest, in order, without a gap; the oldest went.
    assert kept == [f"s{n}" for n in range(20 - len(kept), 20)]
    assert 6 <= len(kept) < 20


def test_lines_that_are_no_entries_are_skipped(tmp_path):
    path = tmp_path / AUDIT_FILE
    AuditLog(path, Clock()).decided("phone", "prompt", "s1", None, True, None)
    with open(path, "ab") as f:
        f.write(b'{"time": "2023-11-14T22:13:20Z", "meth\n[1]\n\xff\n')
    AuditLog(path, Clock()).decided("phone", "abort", "s1", None, True, None)
    assert [e.method for e in read_entries(path)] == ["prompt", "abort"]


@pytest.fixture
def filled(tmp_path):
    clock = Clock()
    log = AuditLog(tmp_path / AUDIT_FILE, clock)
    log.decided("phone", "session.create", "s1", "r1", True, None)
    clock.now += 3600
    log.decided("tablet", "prompt", "s1", "r1", False, "forbidden")
    clock.now += 3600
    log.decided(None, "session.delete", "s2", None, True, None)
    return tmp_path


def audit_cli(capsys, *args):
    status = main(["audit", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_lists_and_filters(capsys, filled, monkeypatch):
    status, out, _ = audit_cli(capsys, "--data-dir", str(filled))
    assert status == 0
    assert out.splitlines() == [
        "2023-11-14T22:13:20.000Z  phone  session.create  s1  r1  ok",
        "2023-11-14T23:13:20.000Z  tablet  prompt  s1  r1  forbidden",
        "2023-11-15T00:13:20.000Z  (server token)  session.delete  s2  -  ok",
    ]
    _, out, _ = audit_cli(capsys, "--data-dir", str(filled), "--device", "tablet")
    assert [line.split("  ")[2] for line in out.splitlines()] == ["prompt"]
    _, out, _ = audit_cli(capsys, "--data-dir", str(filled), "--session", "s1", "--json")
    assert [json.loads(line)["method"] for line in out.splitlines()] == [
        "session.create",
        "prompt",
    ]
    _, out, _ = audit_cli(capsys, "--data-dir", str(filled), "--since", "2023-11-14T23:00:00Z")
    assert [line.split("  ")[2] for line in out.splitlines()] == ["prompt", "session.delete"]
    # An age counts back from now.
    monkeypatch.setattr("time.time", lambda: T0 + 2 * 3600 + 60)
    _, out, _ = audit_cli(capsys, "--data-dir", str(filled), "--since", "30m")
    assert [line.split("  ")[2] for line in out.splitlines()] == ["session.delete"]


def test_cli_usage_errors_and_a_missing_log(capsys, tmp_path):
    status, out, err = audit_cli(capsys, "--data-dir", str(tmp_path), "--since", "yesterday")
    assert (status, out) == (2, "")
    assert "--since 'yesterday'" in err and "Usage: pi-server audit" in err
    status, out, err = audit_cli(capsys, "--data-dir", str(tmp_path))
    assert (status, out) == (0, "")
    assert "no audit log" in err


def test_entries_round_trip():
    entry = AuditEntry("2023-11-14T22:13:20.000Z", "phone", "prompt", "s1", None, True, None)
    assert AuditEntry.from_json(entry.to_json()) == entry
    with pytest.raises(ValueError):
        AuditEntry.from_json({"time": 1, "method": "prompt"})
