"""sessions.approvals: gated calls decided, asked for, answered once, timed out, kept."""

import json

import attr
import pytest
from twisted.internet.task import Clock

from piserver.agents.gate import GATE_TITLE
from piserver.common.errors import NotFound
from piserver.sessions.approvals import Approvals
from piserver.sessions.permissions import PermissionMode, Permissions
from tests.support.approvalhost import FakeApprovalHost


def gated(request_id, tool, tool_input, tool_call_id="call_1"):
    return {
        "type": "extension_ui_request",
        "id": request_id,
        "method": "input",
        "title": GATE_TITLE,
        "placeholder": json.dumps(
            {"toolCallId": tool_call_id, "toolName": tool, "input": tool_input}
        ),
    }


@attr.s
class Connection:
    connection_id: str = attr.ib()


def make(tmp_path, mode=PermissionMode.ASK, timeout=60.0):
    clock = Clock()
    host = FakeApprovalHost(permissions_=Permissions(mode))
    return clock, host, Approvals("s1", clock, host, tmp_path, timeout)


def answers(host):
    return [json.loads(m["value"]) for m in host.sent]


def test_allowed_and_blocked_calls_are_answered_at_once(tmp_path):
    clock, host, approvals = make(tmp_path, PermissionMode.READONLY)
    assert approvals.agent_event(gated("r1", "read", {"path": "a"}))
    assert approvals.agent_event(gated("r2", "bash", {"command": "ls"}))
    allowed, blocked = answers(host)
    assert allowed == {"allow": True} and "read-only" in blocked["block"]
    assert host.published == [] and len(approvals) == 0


def test_ask_first_answer_wins_and_is_journalled(tmp_path):
    clock, host, approvals = make(tmp_path)
    approvals.agent_event(gated("r1", "bash", {"command": "make"}))
    ((event_type, payload, to),) = host.published
    assert event_type == "approval_request" and to is None
    assert payload["summary"] == "make" and payload["expiresAt"] == "1970-01-01T00:01:00Z"
    assert host.waiting and len(host.requests) == 1
    approval_id = payload["approvalId"]
    approvals.respond("phone", approval_id, "deny", "too risky")
    assert answers(host) == [{"block": "the person denied this bash call: too risky"}]
    assert host.published[-1][1] == {
        "type": "approval_resolved",
        "approvalId": approval_id,
        "decision": "deny",
        "by": "phone",
        "reason": "too risky",
    }
    assert not host.waiting
    with pytest.raises(NotFound):
        approvals.respond("laptop", approval_id, "allow", None)


def test_allow_session_and_allow_rule_change_the_sessions_permissions(tmp_path):
    clock, host, approvals = make(tmp_path)
    approvals.agent_event(gated("r1", "bash", {"command": "npm test --ci"}))
    approvals.respond("phone", host.published[-1][1]["approvalId"], "allow_rule", None)
    approvals.agent_event(gated("r2", "bash", {"command": "npm test"}))
    assert answers(host) == [{"allow": True}, {"allow": True}]
    assert host.permissions_.rules[0].pattern == "npm test*" and host.saved == 1


def test_timeout_denies_and_tells_the_model(tmp_path):
    clock, host, approvals = make(tmp_path, timeout=5)
    approvals.agent_event(gated("r1", "bash", {"command": "make"}))
    clock.advance(5)
    assert "no one answered" in answers(host)[0]["block"]
    assert host.published[-1][1]["by"] == "timeout" and len(approvals) == 0


def test_resent_on_attach_withdrawn_on_abort_kept_when_the_agent_stops(tmp_path):
    clock, host, approvals = make(tmp_path)
    approvals.agent_event(gated("r1", "bash", {"command": "make"}, tool_call_id="c1"))
    approvals.attached(Connection("conn-2"))
    assert host.published[-1][0] == "approval_request" and host.published[-1][2] == {"conn-2"}
    host.stopping = True
    approvals.agent_event({"type": "tool_execution_end", "toolCallId": "c1"})
    assert len(approvals) == 1
    approvals.agent_exited()

    # A new server: the request is read back and offered; its answer reaches pi as a
    # message, and the same call then runs once.
    clock2, host2, again = make(tmp_path)
    again.load()
    (request,) = again.pending()
    assert not request.live
    again.respond("phone", request.approval_id, "allow", None)
    assert "allowed" in host2.told[0] and host2.sent == []
    again.agent_event(gated("r9", "bash", {"command": "make"}))
    again.agent_event(gated("r10", "bash", {"command": "make"}))
    assert answers(host2) == [{"allow": True}]
    assert len(again) == 1  # the second make is asked for again

    host2.stopping = False
    again.agent_event({"type": "tool_execution_end", "toolCallId": "call_1"})
    assert host2.published[-1][1]["by"] == "pi-server" and len(again) == 0


def test_a_long_input_is_clipped_in_the_event_but_kept_whole(tmp_path):
    clock, host, approvals = make(tmp_path)
    content = "x" * 100_000
    approvals.agent_event(gated("r1", "write", {"path": "big", "content": content}))
    payload = host.published[-1][1]
    assert len(payload["input"]["content"]) == 16_000
    assert payload["summary"] == "write big (100000 bytes)"
    assert approvals.pending()[0].input["content"] == content


def test_a_deleted_sessions_requests_time_out_no_more(tmp_path):
    clock, host, approvals = make(tmp_path, timeout=5)
    approvals.agent_event(gated("r1", "bash", {"command": "make"}))
    approvals.close()
    clock.advance(10)
    assert [event for event, _payload, _to in host.published] == ["approval_request"]
    assert clock.getDelayedCalls() == []


def test_a_new_mode_decides_what_waits(tmp_path):
    clock, host, approvals = make(tmp_path)
    approvals.agent_event(gated("r1", "bash", {"command": "make"}, tool_call_id="c1"))
    approvals.agent_event(gated("r2", "read", {"path": "a"}, tool_call_id="c2"))
    host.permissions_.mode = PermissionMode.EDITS
    approvals.reconsider("phone")
    # The read runs now; bash still waits in edits mode.
    assert answers(host) == [{"allow": True}]
    assert [r.tool_name for r in approvals.pending()] == ["bash"]
    host.permissions_.mode = PermissionMode.READONLY
    approvals.reconsider("phone")
    assert "read-only" in answers(host)[1]["block"]
    assert host.published[-1][1]["by"] == "phone" and len(approvals) == 0
