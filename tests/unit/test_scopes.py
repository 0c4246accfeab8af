"""Scopes and reach, through the dispatcher and its access guard (security/)."""

import pytest

from piserver.api.methods import RpcMethods
from piserver.security.access import AccessGuard
from piserver.security.scopes import (
    ALL_SCOPES,
    METHOD_SCOPES,
    Grant,
    Scope,
    changes_something,
)
from piserver.wire.dispatch import Dispatcher
from piserver.wire.envelope import Request
from tests.support.fakeaccess import FakeConnection, FakeSession, FakeSessions, RecordingSink
from tests.support.schema import SCHEMA

# What issue 27 says each method needs, written out here so that the table is checked
# against it rather than against itself.
EXPECTED = {
    None: ["hello"],
    Scope.READ: [
        "repos.list",
        "session.list",
        "session.attach",
        "session.detach",
        "session.diff",
        "session.files",
        "session.read_file",
        "get_state",
        "get_messages",
        "get_available_models",
        "get_available_thinking_levels",
        "get_session_stats",
        "get_commands",
        "get_last_assistant_text",
        "get_fork_messages",
        "get_entries",
        "get_tree",
        "export_html",
        "usage.report",
        "session.export",
        "push.subscribe",
        "push.unsubscribe",
        "push.list",
        "session.viewing",
    ],
    Scope.PROMPT: [
        "prompt",
        "steer",
        "follow_up",
        "abort",
        "clear_queue",
        "abort_retry",
        "compact",
        "bash",
        "abort_bash",
        "native_tool_response",
        "extension_ui_response",
    ],
    Scope.APPROVE: ["approval.respond"],
    Scope.SHIP: ["session.commit", "session.push", "session.pull_request"],
    Scope.MANAGE: [
        "session.create",
        "session.delete",
        "session.import",
        "sessions.importable",
        "session.set_permission_mode",
        "session.set_budget",
        "fork",
        "clone",
        "new_session",
        "clear_conversation",
        "switch_session",
        "set_session_name",
        "set_model",
        "cycle_model",
        "set_thinking_level",
        "cycle_thinking_level",
        "set_auto_compaction",
        "set_auto_retry",
        "set_steering_mode",
        "set_follow_up_mode",
    ],
}
EXPECTED_SCOPE = {method: scope for scope, methods in EXPECTED.items() for method in methods}
SCHEMA_METHODS = sorted(SCHEMA["methods"])


def dispatch(dispatcher, connection, method, params=None, session_id=None):
    outcomes = []
    request = Request(id="1", method=method, params=params or {}, session_id=session_id)
    dispatcher.dispatch(connection, request).addCallback(outcomes.append)
    (outcome,) = outcomes
    # (ok, value); the third, ``repeat``, is the idempotency keys' (test_idempotency.py).
    return outcome[:2]


def answering(*methods):
    return {method: (lambda connection, request: {"done": request.method}) for method in methods}


def test_the_table_is_the_issues_and_covers_the_schema():
    assert METHOD_SCOPES == EXPECTED_SCOPE
    assert set(SCHEMA_METHODS) <= set(METHOD_SCOPES)


@pytest.mark.parametrize("method", SCHEMA_METHODS)
def test_scope_matrix(method):
    """Each method, with a token of each single scope and one of all scopes but one."""
    needed = EXPECTED_SCOPE[method]
    dispatcher = Dispatcher(answering(method), guard=AccessGuard())
    for scope in Scope:
        for scopes in (frozenset({scope}), ALL_SCOPES - {scope}):
            grant = Grant("tablet", scopes)
            ok, value = dispatch(dispatcher, FakeConnection(grant), method)
            if needed is None or needed in scopes:
                assert (ok, value) == (True, {"done": method})
            else:
                assert not ok
                assert value.code == "forbidden"
                assert f"needs the {needed} scope" in value.message
    assert dispatch(dispatcher, FakeConnection(), method) == (True, {"done": method})


def test_methods_outside_the_table_are_for_the_server_token_only():
    # pi commands passed through by name: nothing is open to a device by accident.
    dispatcher = Dispatcher({}, fallback=lambda c, r: {"pi": r.method}, guard=AccessGuard())
    ok, error = dispatch(dispatcher, FakeConnection(Grant("phone")), "get_new_thing", {}, "s1")
    assert (ok, error.code) == (False, "forbidden")
    assert "only the server token" in error.message
    assert dispatch(dispatcher, FakeConnection(), "get_new_thing") == (
        True,
        {"pi": "get_new_thing"},
    )


def reach_dispatcher(sink=None):
    sessions = FakeSessions().add(
        FakeSession("mine", "r1", "tablet"),
        FakeSession("theirs", "r1", "phone"),
        FakeSession("other-repo", "r2", "tablet"),
        FakeSession("chat", None, None),
    )
    methods = answering("session.attach", "session.detach", "prompt", "get_state")
    methods["session.create"] = lambda c, r: {"sessionId": "mine"}
    return Dispatcher(methods, guard=AccessGuard(sessions, sink))


@pytest.mark.parametrize(
    "grant, visible",
    [
        (Grant("tablet", repos=frozenset({"r1"})), {"mine", "theirs"}),
        (Grant("tablet", own_sessions=True), {"mine", "other-repo"}),
        (Grant("tablet", repos=frozenset({"r1"}), own_sessions=True), {"mine"}),
        (Grant("tablet"), {"mine", "theirs", "other-repo", "chat"}),
    ],
)
def test_sessions_out_of_reach_are_not_found(grant, visible):
    dispatcher = reach_dispatcher()
    connection = FakeConnection(grant)
    for session_id in ("mine", "theirs", "other-repo", "chat"):
        for method, params, envelope in (
            ("session.attach", {"sessionId": session_id}, None),
            ("prompt", {}, session_id),
            ("get_state", {"sessionId": session_id}, "mine"),
        ):
            ok, value = dispatch(dispatcher, connection, method, params, envelope)
            if session_id in visible:
                assert ok, (method, session_id)
            else:
                assert (ok, value.code) == (False, "not_found")
                assert value.message == f"no session {session_id!r}"
        # Detaching never fails.
        assert dispatch(dispatcher, connection, "session.detach", {"sessionId": session_id})[0]


def test_creating_outside_the_repositories_is_forbidden():
    dispatcher = reach_dispatcher()
    connection = FakeConnection(Grant("tablet", repos=frozenset({"r1"})))
    ok, value = dispatch(dispatcher, connection, "session.create", {"repoId": "r2"})
    assert (ok, value.code) == (False, "forbidden")
    assert "may only work on repositories r1" in value.message
    ok, value = dispatch(dispatcher, connection, "session.create", {"mode": "chat"})
    assert (ok, value.code) == (False, "forbidden")
    assert dispatch(dispatcher, connection, "session.create", {"repoId": "r1"})[0]


def test_changing_requests_and_refusals_are_recorded_reads_are_not():
    sink = RecordingSink()
    dispatcher = reach_dispatcher(sink)
    reader = FakeConnection(Grant("tablet", frozenset({Scope.READ})))
    assert dispatch(dispatcher, reader, "session.attach", {"sessionId": "mine"})[0]
    assert not dispatch(dispatcher, reader, "prompt", {}, "mine")[0]
    assert dispatch(dispatcher, FakeConnection(Grant("tablet")), "prompt", {}, "theirs")[0]
    assert dispatch(dispatcher, FakeConnection(), "session.create", {"repoId": "r1"})[0]
    assert sink.decisions == [
        ("tablet", "prompt", "mine", "r1", False, "forbidden"),
        ("tablet", "prompt", "theirs", "r1", True, None),
        (None, "session.create", "mine", "r1", True, None),
    ]


def test_what_changes_something():
    assert not changes_something("session.list")
    assert not changes_something("hello")
    assert changes_something("push.subscribe")
    assert changes_something("approval.respond")
    assert changes_something("extension_ui_response")
    assert changes_something("some_new_pi_command")


def test_a_failing_record_does_not_lose_the_answer():
    class Broken:
        def decided(self, *args):
            raise OSError("disk full")

    dispatcher = reach_dispatcher(Broken())
    assert dispatch(dispatcher, FakeConnection(), "prompt", {}, "mine") == (
        True,
        {"done": "prompt"},
    )


def test_describe_for_hello():
    assert Grant.server_token().describe() == {
        "name": None,
        "scopes": ["read", "prompt", "approve", "ship", "manage"],
        "repos": None,
        "ownSessions": False,
    }
    grant = Grant("relay", frozenset({Scope.APPROVE, Scope.READ}), frozenset({"b", "a"}), True)
    assert grant.describe() == {
        "name": "relay",
        "scopes": ["read", "approve"],
        "repos": ["a", "b"],
        "ownSessions": True,
    }


def test_an_own_sessions_token_may_create_chat_sessions():
    dispatcher = reach_dispatcher()
    connection = FakeConnection(Grant("tablet", own_sessions=True))
    assert dispatch(dispatcher, connection, "session.create", {"mode": "chat"})[0]


def test_an_answer_without_a_session_finds_only_dialogs_in_reach():
    # extension_ui_response may leave out the session: it then goes to the session waiting
    # for that dialog, and only one the device may see.
    sessions = FakeSessions().add(
        FakeSession("theirs", "r2", "phone", dialogs={"d1"}),
        FakeSession("mine", "r1", "tablet", dialogs={"d2"}),
    )
    methods = RpcMethods(sessions=sessions).table()
    dispatcher = Dispatcher(methods, guard=AccessGuard(sessions))
    tablet = FakeConnection(Grant("tablet", repos=frozenset({"r1"})))
    ok, error = dispatch(dispatcher, tablet, "extension_ui_response", {"id": "d1"})
    assert (ok, error.code) == (False, "not_found")
    assert sessions.sessions["theirs"].answers == []
    assert dispatch(dispatcher, tablet, "extension_ui_response", {"id": "d2"}) == (True, {})
    assert dispatch(dispatcher, FakeConnection(), "extension_ui_response", {"id": "d1"})[0]
    assert [len(s.answers) for s in sessions.sessions.values()] == [1, 1]


def test_the_machines_pi_sessions_are_out_of_a_repository_limited_tokens_reach():
    dispatcher = Dispatcher(answering("sessions.importable", "session.import"), guard=AccessGuard())
    for method in ("sessions.importable", "session.import"):
        limited = FakeConnection(Grant("tablet", repos=frozenset({"r1"})))
        ok, error = dispatch(dispatcher, limited, method)
        assert (ok, error.code) == (False, "forbidden")
        own = FakeConnection(Grant("tablet", own_sessions=True))
        assert dispatch(dispatcher, own, method)[0]
