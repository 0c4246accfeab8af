"""Permission modes, rules and grants: the decision for one tool call."""

import os

import pytest

from piserver.common.errors import InvalidParams
from piserver.sessions.permissions import (
    PermissionMode,
    Permissions,
    Rule,
    Verdict,
    command_prefix,
    grant_for,
    inside,
    parse_rules,
    rule_for,
    summary,
)


def decide(permissions, tool, tool_input, cwd="/nonexistent/checkout"):
    return permissions.decide(tool, tool_input, cwd)[0]


def test_full_runs_everything_and_ask_asks_for_everything():
    full, ask = Permissions(PermissionMode.FULL), Permissions(PermissionMode.ASK)
    for tool, tool_input in [("bash", {"command": "rm -rf /"}), ("read", {"path": "a"})]:
        assert decide(full, tool, tool_input) is Verdict.ALLOW
        assert decide(ask, tool, tool_input) is Verdict.ASK


def test_edits_runs_reads_and_edits_inside_the_checkout(tmp_path):
    edits = Permissions(PermissionMode.EDITS)
    cwd = str(tmp_path / "checkout")
    os.mkdir(cwd)
    assert decide(edits, "read", {"path": "/etc/passwd"}, cwd) is Verdict.ALLOW
    assert decide(edits, "write", {"path": "src/a.py", "content": ""}, cwd) is Verdict.ALLOW
    assert decide(edits, "edit", {"path": f"{cwd}/a.py", "edits": []}, cwd) is Verdict.ALLOW
    assert decide(edits, "write", {"path": "../x", "content": ""}, cwd) is Verdict.ASK
    assert decide(edits, "write", {"path": cwd, "content": ""}, cwd) is Verdict.ASK
    assert decide(edits, "bash", {"command": "ls"}, cwd) is Verdict.ASK
    # A symlink in the checkout leads out of it: asked for.
    os.symlink(str(tmp_path), f"{cwd}/out")
    assert decide(edits, "write", {"path": "out/x", "content": ""}, cwd) is Verdict.ASK


def test_readonly_blocks_without_asking():
    readonly = Permissions(PermissionMode.READONLY)
    assert decide(readonly, "grep", {"pattern": "x"}) is Verdict.ALLOW
    verdict, reason = readonly.decide("bash", {"command": "ls"}, "/tmp")
    assert verdict is Verdict.BLOCK and "read-only" in reason
    assert decide(readonly, "write", {"path": "a", "content": ""}) is Verdict.BLOCK


def test_rules_allow_deny_ask_and_deny_wins():
    rules = parse_rules(
        [
            {"tool": "bash", "pattern": "git status*", "action": "allow"},
            {"tool": "bash", "pattern": "npm test*", "action": "allow"},
            {"tool": "bash", "pattern": "*curl*", "action": "deny"},
        ]
    )
    permissions = Permissions(PermissionMode.RULES, rules)
    assert decide(permissions, "bash", {"command": "git status --short"}) is Verdict.ALLOW
    assert decide(permissions, "bash", {"command": "npm test -- curl"}) is Verdict.BLOCK
    assert decide(permissions, "bash", {"command": "make"}) is Verdict.ASK
    # An allowed prefix does not cover a chained command.
    assert decide(permissions, "bash", {"command": "git status; rm -rf ~"}) is Verdict.ASK
    assert decide(permissions, "bash", {"command": "git status $(rm x)"}) is Verdict.ASK


@pytest.mark.parametrize(
    "rules",
    [
        "x",
        [{"tool": "bash", "pattern": "*"}],
        [{"tool": "", "pattern": "*", "action": "allow"}],
        [{"tool": "bash", "pattern": "", "action": "deny"}],
        [{"tool": "bash", "pattern": "*", "action": "maybe"}],
    ],
)
def test_bad_rules_are_refused(rules):
    with pytest.raises(InvalidParams):
        parse_rules(rules)


def test_allow_session_grants_a_prefix_and_allow_rule_adds_a_rule():
    assert command_prefix("git status --short") == "git status"
    assert command_prefix("ls -la") == "ls"
    permissions = Permissions(PermissionMode.ASK, grants=[grant_for("bash", {"command": "ls -l"})])
    assert decide(permissions, "bash", {"command": "ls -la /"}) is Verdict.ALLOW
    assert decide(permissions, "bash", {"command": "lsof"}) is Verdict.ASK
    assert rule_for("bash", {"command": "npm test --ci"}) == Rule("bash", "npm test*", "allow")
    assert rule_for("write", {"path": "a.txt"}) == Rule("write", "a.txt", "allow")


def test_summaries():
    assert summary("bash", {"command": "make"}) == "make"
    assert summary("write", {"path": "a", "content": "héllo"}) == "write a (6 bytes)"
    diff = summary("edit", {"path": "a.py", "edits": [{"oldText": "x = 1", "newText": "x = 2"}]})
    assert diff.splitlines()[0] == "edit a.py"
    assert "-x = 1" in diff and "+x = 2" in diff


def test_inside():
    assert inside("/srv/a", "b/c")
    assert not inside("/srv/a", "/srv/ab/c")
    assert not inside("/srv/a", "")
