"""
pi's project trust as the server decides it: what needs it (as pi sees it), the question to
the session's clients, and what each answer (or none) does to the agent's arguments.
"""

import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.logger import globalLogPublisher

from piserver.agents.projecttrust import TRUST_TITLE, TrustPolicy, trust_resources
from tests.unit.test_sessions import FakeConnection, Harness


def test_what_needs_trust_is_what_pi_asks_about(tmp_path):
    home = tmp_path / "home"
    (home / ".agents" / "skills").mkdir(parents=True)
    project = tmp_path / "work" / "project"
    (project / ".pi").mkdir(parents=True)
    assert trust_resources(project, home=str(home)) == ()  # a bare .pi needs none
    (project / ".pi" / "extensions").mkdir()
    (project / ".pi" / "SYSTEM.md").write_text("x")
    (project / ".pi" / "notes.txt").write_text("x")
    (tmp_path / "work" / ".agents" / "skills").mkdir(parents=True)
    assert trust_resources(project, home=str(home)) == (
        ".pi/extensions",
        ".pi/SYSTEM.md",
        "../.agents/skills",
    )
    # A link counts as what pi would find, and is not followed to look.
    (project / ".pi" / "settings.json").symlink_to(tmp_path / "nowhere")
    assert ".pi/settings.json" in trust_resources(project, home=str(home))
    # The user's own skills are not a project's.
    assert trust_resources(home, home=str(home)) == ()


def hostile_folder(session):
    (session.cwd / ".pi" / "extensions").mkdir(parents=True)
    (session.cwd / ".pi" / "extensions" / "x.ts").write_text("export default () => {}\n")


async def _plant(session):
    hostile_folder(session)


def start(harness, connection, **kwargs):
    d = ensureDeferred(harness.sessions.create(connection, "chat", prepare=_plant, **kwargs))
    harness.answer_startup()
    return d.result


def question(connection):
    (frame,) = [f for f in connection.sent if f["type"] == "extension_ui_request"]
    return frame["payload"]


def answer(harness, connection, session, **fields):
    session.calls.answer_dialog(connection, {"id": question(connection)["id"], **fields})


def test_ask_starts_without_it_and_a_yes_restarts_the_agent_with_it(tmp_path):
    harness = Harness(tmp_path, project_trust_timeout=60.0)
    connection = FakeConnection()
    session = start(harness, connection)
    assert "--no-approve" in harness.reactor.spawned[0].args
    asked = question(connection)
    assert asked["method"] == "confirm" and asked["title"] == TRUST_TITLE
    assert ".pi/extensions" in asked["message"] and asked["timeout"] == 60_000
    # A device that attaches later is asked too.
    later = FakeConnection("c2")
    ensureDeferred(harness.sessions.attach(later, session, exclusive=False))
    assert question(later)["id"] == asked["id"]

    answer(harness, later, session, confirmed=True)
    assert session.project_trust is True
    assert harness.store.get(session.id)["projectTrust"] is True
    harness.answer("abort")  # the polite stop of the first agent
    harness.process().end(code=0)
    assert len(harness.reactor.spawned) == 2
    assert "--approve" in harness.reactor.spawned[1].args
    harness.answer_startup()
    assert session.status() == "running"
    # Answered for good: the next agent is not asked again.
    assert len([f for f in connection.sent if f["type"] == "extension_ui_request"]) == 1
    assert [
        f["payload"]["id"] for f in connection.sent if f["type"] == "extension_ui_resolved"
    ] == [asked["id"]]


def test_a_yes_during_a_run_restarts_the_agent_after_it(tmp_path):
    harness = Harness(tmp_path)
    connection = FakeConnection()
    session = start(harness, connection)
    harness.process().stdout(b'{"type":"agent_start"}\n')
    answer(harness, connection, session, confirmed=True)
    assert harness.process().signals == [] and len(harness.reactor.spawned) == 1
    harness.process().stdout(b'{"type":"agent_end","messages":[]}\n{"type":"agent_settled"}\n')
    harness.answer("abort")
    harness.process().end(code=0)
    assert "--approve" in harness.reactor.spawned[1].args


def test_a_yes_while_an_agent_starts_restarts_it_once_it_runs(tmp_path):
    harness = Harness(tmp_path)
    connection = FakeConnection()
    session = start(harness, connection)
    harness.process().end(code=1)  # a crash: the question stays open
    ensureDeferred(harness.sessions.ensure_agent(session))
    harness.reactor.advance(0.5)
    assert session.status() == "starting"
    answer(harness, connection, session, confirmed=True)
    assert "--no-approve" in harness.reactor.spawned[1].args
    harness.answer_startup()
    harness.answer("abort")
    harness.process().end(code=0)
    assert "--approve" in harness.reactor.spawned[2].args


def test_a_no_is_kept_and_nothing_restarts(tmp_path):
    harness = Harness(tmp_path)
    connection = FakeConnection()
    session = start(harness, connection)
    answer(harness, connection, session, confirmed=False)
    assert session.project_trust is False
    assert harness.sessions.agents.args(session)[-1] == "--no-approve"
    assert len(harness.reactor.spawned) == 1


def test_nobody_answering_means_not_trusted_and_the_next_agent_asks_again(tmp_path):
    harness = Harness(tmp_path, project_trust_timeout=30.0)
    session = start(harness, None)
    assert session.calls.dialogs.pending()
    # The agent's exit does not withdraw the server's question.
    harness.process().end(code=1)
    assert session.calls.dialogs.pending()
    harness.reactor.advance(30)
    assert not session.calls.dialogs.pending()
    assert session.project_trust is None
    connection = FakeConnection()
    ensureDeferred(harness.sessions.attach(connection, session, last_seq=0))
    resolved = [f for f in connection.sent if f["type"] == "extension_ui_resolved"]
    assert resolved and resolved[-1]["payload"]["reason"] == "timeout"
    ensureDeferred(harness.sessions.ensure_agent(session))
    harness.reactor.advance(1)
    harness.answer_startup()
    assert "--no-approve" in harness.reactor.spawned[-1].args
    # The replay holds the first question; the new agent's is another.
    first, again = [f["payload"] for f in connection.sent if f["type"] == "extension_ui_request"]
    assert again["title"] == TRUST_TITLE and again["id"] != first["id"]
    assert again["id"] != resolved[-1]["payload"]["id"]


@pytest_twisted.ensureDeferred
async def test_a_deleted_session_s_question_goes_with_it(tmp_path):
    harness = Harness(tmp_path, project_trust_timeout=30.0)
    session = start(harness, FakeConnection())
    deleting = ensureDeferred(harness.sessions.delete(session))
    harness.answer("abort")
    harness.process().end(code=0)
    await deleting
    assert not session.calls.dialogs.pending()
    # Its timeout does not fire for a session that is gone.
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        harness.reactor.advance(31)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert logged == []


def test_always_and_never_ask_nobody(tmp_path):
    for policy, flag in ((TrustPolicy.ALWAYS, "--approve"), (TrustPolicy.NEVER, "--no-approve")):
        (tmp_path / policy).mkdir()
        harness = Harness(tmp_path / policy, project_trust=policy)
        connection = FakeConnection()
        start(harness, connection)
        assert flag in harness.reactor.spawned[0].args
        assert not [f for f in connection.sent if f["type"] == "extension_ui_request"]


def test_a_folder_with_nothing_to_trust_asks_nothing(tmp_path):
    harness = Harness(tmp_path)
    connection = FakeConnection()
    d = ensureDeferred(harness.sessions.create(connection, "chat"))
    harness.answer_startup()
    assert d.called
    assert "--no-approve" in harness.reactor.spawned[0].args
    assert connection.sent == []
