"""
SessionManager with fake processes and a fake clock: agent arguments, restarts,
crash reports, crash-loop back-off and agent_failed, the model pin, failures
during creation.
"""

import json
import os

import attr
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from piserver.agents.supervisor import AgentSupervisor
from piserver.common.errors import AgentFailed, InvalidState, TooManySessions
from piserver.repos.checkouts import Checkout, CheckoutRecord, RepoSource
from piserver.sessions import SessionManager, SessionSettings, aborts
from piserver.sessions.index import StateStore
from piserver.sessions.journal import JournalLimits
from piserver.sessions.observer import SessionObserver
from piserver.sessions.permissions import PermissionMode, Permissions
from piserver.sessions.session import Session
from tests.support.fakeprocess import FakeProcessReactor


class FakeConnection:
    def __init__(self, connection_id="c1"):
        self.connection_id = connection_id
        self.event_mode = "full"
        self.features = frozenset({"snapshots"})
        self.native_tools = None
        self.sent = []
        self.lost_callbacks = []

    def send(self, data):
        self.sent.append(json.loads(data))

    def on_lost(self, callback):
        self.lost_callbacks.append(callback)


class Models:
    async def require(self, provider, model_id):
        return {"provider": provider, "id": model_id}


# The Harness options that are settings (the rest are the manager's collaborators).
SETTINGS = frozenset(attr.fields_dict(SessionSettings))


class Harness:
    def __init__(self, tmp_path, **options):
        self.reactor = FakeProcessReactor()
        (tmp_path / "sessions").mkdir(exist_ok=True)
        self.supervisor = AgentSupervisor(
            self.reactor, ["/bin/pi"], str(tmp_path), {}, forbidden_env=()
        )
        self.store = StateStore(tmp_path / "state.json", self.reactor)
        ids = iter(f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 100))
        settings = {k: options.pop(k) for k in list(options) if k in SETTINGS}
        self.sessions = SessionManager(
            self.reactor,
            SessionSettings(data_dir=tmp_path, **settings),
            self.supervisor,
            self.store,
            Models(),
            new_id=lambda: next(ids),
            **{"in_thread": maybeDeferred, **options},
        )
        self.sessions.startService()

    def process(self, n=-1):
        return self.reactor.spawned[n].process

    def answer_startup(self, n=-1, model=("fake", "fake-1")):
        process = self.process(n)
        (get_state,) = [c for c in process.lines() if c["type"] == "get_state"]
        process.respond(
            get_state, {"model": {"provider": model[0], "id": model[1]}, "isStreaming": False}
        )

    def answer(self, command_type, data=None, n=-1, **kwargs):
        process = self.process(n)
        (command,) = [c for c in process.lines() if c["type"] == command_type][-1:]
        process.respond(command, data, **kwargs)


@pytest.fixture
def harness(tmp_path):
    return Harness(tmp_path)


def create(harness, connection=None, **kwargs):
    d = ensureDeferred(harness.sessions.create(connection, "chat", **kwargs))
    harness.answer_startup()
    return d


def test_chat_agent_arguments_and_model_pin(harness, tmp_path):
    d = create(harness, system_prompt="Be brief.")
    session = d.result
    spawn = harness.reactor.spawned[0]
    assert spawn.path == str(tmp_path / "sessions" / session.id / "workspace")
    assert spawn.args[:3] == ["/bin/pi", "--mode", "rpc"]
    assert "--no-builtin-tools" in spawn.args
    assert spawn.args[spawn.args.index("--session-dir") + 1] == str(
        tmp_path / "sessions" / session.id / "pi"
    )
    # The text reaches pi through the extension, in a file of the session's.
    assert "--system-prompt" not in spawn.args
    prompt_file = tmp_path / "sessions" / session.id / "system-prompt.md"
    assert f"--system-prompt-file={prompt_file}" in spawn.args
    assert prompt_file.read_text() == "Be brief."
    # No model was asked for: the one pi started with is pinned for restarts.
    assert (session.provider, session.model_id) == ("fake", "fake-1")
    assert harness.store.get(session.id)["modelId"] == "fake-1"
    restart_args = harness.sessions.agents.args(session)
    position = restart_args.index("--provider")
    assert restart_args[position : position + 4] == ["--provider", "fake", "--model", "fake-1"]


def test_crash_reports_then_restart_with_backoff_then_agent_failed(harness):
    connection = FakeConnection()
    session = create(harness, connection).result
    harness.process().stdout(b'{"type":"agent_start"}\n')
    harness.process().stderr(b"boom\n")
    harness.process().end(code=3)
    types = [f["type"] for f in connection.sent]
    assert types == ["agent_start", "agent_end", "agent_settled", "agent_exit"]
    end, exit_event = connection.sent[1]["payload"], connection.sent[3]["payload"]
    assert end["success"] is False
    assert end["error"] == {"code": "agent_exited", "message": "agent exited (code 3)"}
    assert connection.sent[2]["payload"]["error"] == end["error"]
    assert exit_event["code"] == 3 and "boom" in exit_event["stderrTail"]

    # Each restart waits longer: 0.5 s, 1 s, 2 s, 4 s.
    for crashes, delay in enumerate([0.5, 1.0, 2.0, 4.0], start=1):
        spawned = len(harness.reactor.spawned)
        d = harness.sessions.ensure_agent(session)
        harness.reactor.advance(delay - 0.01)
        assert len(harness.reactor.spawned) == spawned
        harness.reactor.advance(0.01)
        assert len(harness.reactor.spawned) == spawned + 1
        harness.answer_startup()
        assert d.result is session.agent
        if crashes < 4:
            harness.process().end(code=1)
    harness.process().stderr(b"still broken\n")
    harness.process().end(code=1)  # the fifth exit within a minute
    failed = harness.sessions.ensure_agent(session)
    error = failed.result.value
    failed.addErrback(lambda f: None)
    assert isinstance(error, AgentFailed) and "still broken" in error.message
    # A minute later the session may try again.
    harness.reactor.advance(61)
    retried = harness.sessions.ensure_agent(session)
    assert not retried.called
    retried.addErrback(lambda f: None)


def test_callers_during_startup_share_one_agent(harness):
    session = create(harness).result
    harness.process().end(code=1)
    first = harness.sessions.ensure_agent(session)
    second = harness.sessions.ensure_agent(session)
    harness.reactor.advance(0.5)
    assert len(harness.reactor.spawned) == 2
    harness.answer_startup()
    assert first.result is second.result is session.agent
    assert session.status() == "running"


def test_a_stop_we_asked_for_is_not_a_crash(harness):
    connection = FakeConnection()
    session = create(harness, connection).result
    d = session.lifecycle.stop()
    harness.answer("abort")
    harness.process().end(code=0)
    assert d.called
    assert connection.sent == []
    assert session.status() == "stopped"


def test_an_abort_pi_answers_is_passed_on(harness):
    connection = FakeConnection()
    session = create(harness, connection).result
    d = ensureDeferred(harness.sessions.abort(session))
    harness.answer("abort")
    assert d.result == {}
    assert harness.process().signals == []


def test_an_abort_pi_does_not_answer_stops_it_and_ends_the_run(harness):
    connection = FakeConnection()
    session = create(harness, connection).result
    first = harness.process()
    first.dies_of.add("KILL")
    prompt = ensureDeferred(harness.sessions.prompt(session, "many images"))
    d = ensureDeferred(harness.sessions.abort(session))
    # A second abort (another device) at the same moment ends the run no second time.
    again = ensureDeferred(harness.sessions.abort(session))
    harness.reactor.advance(aborts.ABORT_ANSWER_TIMEOUT - 0.01)
    assert not d.called
    harness.reactor.advance(0.01)
    assert first.signals == ["KILL"]
    assert d.result == {"agentStopped": True}
    assert again.result == {"agentStopped": True}
    prompt.addErrback(lambda f: f.value.code)
    assert prompt.result == "agent_exited"
    events = [(f["type"], f["payload"]) for f in connection.sent]
    assert events[:2] == [
        (
            "agent_end",
            {
                "type": "agent_end",
                "messages": [],
                "success": False,
                "error": {
                    "code": "aborted",
                    "message": "aborted: pi did not stop within 3 s, so its agent was stopped",
                },
            },
        ),
        ("agent_settled", {"type": "agent_settled", "aborted": True}),
    ]
    assert [kind for kind, _ in events].count("agent_end") == 1
    # Not a crash (no agent_exit, no back-off): a new agent starts at once for the
    # attached client, and the conversation goes on there.
    assert "agent_exit" not in [kind for kind, _ in events]
    assert len(harness.reactor.spawned) == 2
    harness.answer_startup()
    assert session.status() == "running"


def test_prompt_refusal_is_invalid_state(harness):
    session = create(harness).result
    d = ensureDeferred(harness.sessions.prompt(session, "hi"))
    harness.answer("prompt", success=False, error_message="Agent is already processing")
    failure = d.result
    d.addErrback(lambda f: None)
    assert isinstance(failure.value, InvalidState)
    assert "already processing" in failure.value.message
    assert session.name == "hi"


def test_agent_that_fails_to_start_leaves_nothing(harness, tmp_path):
    d = ensureDeferred(harness.sessions.create(None, "chat"))
    harness.process().end(code=1)
    assert d.called
    d.addErrback(lambda f: None)
    assert not (tmp_path / "sessions" / "00000000-0000-4000-8000-000000000001").exists()
    assert harness.sessions.sessions == {}
    assert harness.store.sessions() == {}


@pytest_twisted.ensureDeferred
async def test_delete_stops_the_agent_and_forgets_the_session(harness):
    connection = FakeConnection()
    session = create(harness, connection).result
    deleting = ensureDeferred(harness.sessions.delete(session))
    harness.answer("abort")
    harness.process().end(code=0)
    await deleting
    assert session.id not in harness.sessions.sessions
    assert harness.store.get(session.id) is None
    assert not session.directory.exists()


@pytest_twisted.ensureDeferred
async def test_delete_right_after_agent_end_logs_nothing_above_info(harness):
    """Issue 21 point 16: pi's events that follow agent_end (agent_settled) while the
    delete stops it are journalled or dropped quietly, never a critical traceback."""
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        session = create(harness, FakeConnection()).result
        harness.process().stdout(b'{"type":"agent_end","messages":[]}\n')
        deleting = ensureDeferred(harness.sessions.delete(session))
        harness.process().stdout(b'{"type":"agent_settled"}\n')
        harness.answer("abort")
        harness.process().stdout(b'{"type":"agent_settled"}\n')
        harness.process().end(code=0)
        await deleting
        # A straggler after the stream closed is dropped, not recorded.
        session.stream.publish("agent_settled", {"type": "agent_settled"})
    finally:
        globalLogPublisher.removeObserver(logged.append)
    loud = [e for e in logged if e.get("log_level", LogLevel.info) > LogLevel.info]
    assert loud == []
    assert not session.directory.exists()


def test_idle_agents_are_stopped_and_restart_on_demand(tmp_path):
    harness = Harness(tmp_path, idle_timeout=600)
    connection = FakeConnection()
    busy = create(harness, connection).result
    idle = create(harness).result
    assert idle.idle() and not busy.idle()
    harness.reactor.advance(540)
    assert harness.process(1).lines()[-1]["type"] != "abort"
    harness.reactor.advance(120)  # idle for over 600 s now
    assert harness.process(1).lines()[-1]["type"] == "abort"
    harness.answer("abort", n=1)
    harness.process(1).end(code=0)
    assert idle.status() == "stopped" and busy.status() == "running"
    assert [c["type"] for c in harness.process(0).lines()] == ["get_state"]
    restarted = harness.sessions.ensure_agent(idle)
    harness.answer_startup()
    assert restarted.result is idle.agent


def test_agent_limit_stops_the_longest_idle_one_or_refuses(tmp_path):
    harness = Harness(tmp_path, max_agents=2)
    first = create(harness).result
    harness.reactor.advance(10)
    second = create(harness).result
    third = ensureDeferred(harness.sessions.create(None, "chat"))
    # The longest idle agent (the first) is stopped to make room.
    harness.answer("abort", n=0)
    harness.process(0).end(code=0)
    harness.answer_startup()
    assert third.called and first.status() == "stopped"
    assert second.status() == "running"

    # Nobody is idle (both streaming): a fourth is refused.
    for session in (second, third.result):
        session.streaming = True
    refused = ensureDeferred(harness.sessions.create(None, "chat"))
    failure = refused.result
    refused.addErrback(lambda f: None)
    assert isinstance(failure.value, TooManySessions)
    assert "limit is 2" in failure.value.message


def test_the_agent_limit_holds_when_creates_arrive_together(tmp_path):
    harness = Harness(tmp_path, max_agents=2)
    assert create(harness).called
    harness.reactor.advance(10)
    assert create(harness).called
    # Four creates at once, while both running agents are idle.
    creates = [ensureDeferred(harness.sessions.create(None, "chat")) for _ in range(4)]
    for spawn in list(harness.reactor.spawned[:2]):
        if any(c["type"] == "abort" for c in spawn.process.lines()):
            harness.answer("abort", n=harness.reactor.spawned.index(spawn))
            spawn.process.end(code=0)
    for n in range(2, len(harness.reactor.spawned)):
        harness.answer_startup(n)
    alive = [s for s in harness.reactor.spawned if not s.process.ended]
    assert len(alive) <= 2
    refused = [d.result for d in creates if isinstance(d.result, Failure)]
    for d in creates:
        d.addErrback(lambda f: None)
    for failure in refused:
        assert failure.check(TooManySessions)
    assert len(creates) - len(refused) == len(alive) == 2


def test_a_corrupt_state_file_is_rebuilt_from_the_session_directories(tmp_path):
    first = Harness(tmp_path)
    kept = create(first, system_prompt="keep me").result
    doomed = create(first).result
    deleting = ensureDeferred(first.sessions.delete(doomed))
    first.answer("abort")
    first.process().end(code=0)
    assert deleting.called
    (tmp_path / "state.json").write_text("{ this is not json")

    second = Harness(tmp_path)
    assert list(second.sessions.sessions) == [kept.id]
    recovered = second.sessions.sessions[kept.id]
    assert recovered.system_prompt == "keep me" and recovered.mode == "chat"
    assert second.store.get(kept.id)["sessionId"] == kept.id  # state.json written anew
    assert list(tmp_path.glob("state.json.corrupt-*"))


def test_no_session_directory_is_seen_half_made_or_half_removed(tmp_path, monkeypatch):
    # Whoever lists the sessions while the server runs (recovery after a crash, a test
    # counting them) sees a warm agent's directory with its intent in it, and a removed
    # session's directory gone before its files are.
    from piserver.sessions import intents, teardown

    seen = []
    write = intents.write_json_atomic
    remove = teardown.shutil.rmtree

    def write_and_look(path, *args, **kwargs):
        seen.append(("written", sorted(p.name for p in (tmp_path / "sessions").iterdir())))
        return write(path, *args, **kwargs)

    def remove_and_look(path, *args, **kwargs):
        seen.append(("removed", sorted(p.name for p in (tmp_path / "sessions").iterdir())))
        return remove(path, *args, **kwargs)

    monkeypatch.setattr(intents, "write_json_atomic", write_and_look)
    monkeypatch.setattr(teardown.shutil, "rmtree", remove_and_look)
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    doomed = create(harness).result
    assert doomed is warm
    deleting = ensureDeferred(harness.sessions.delete(doomed))
    harness.answer("abort", n=0)
    harness.process(0).end(code=0)
    assert deleting.called
    assert seen[0] == ("written", [f".new-{warm.id}"])
    assert ("removed", [f".gone-{warm.id}"]) in seen
    assert not (tmp_path / "sessions" / f".gone-{warm.id}").exists()


def test_what_a_crash_left_half_made_or_half_removed_is_removed_at_start(tmp_path):
    sessions = tmp_path / "sessions"
    for name in (".new-00000000-0000-4000-8000-000000000077", ".gone-x"):
        (sessions / name / "workspace").mkdir(parents=True)
        (sessions / name / "workspace" / "file").write_text("left")
    harness = Harness(tmp_path)
    assert harness.sessions.recovered.called
    assert sorted(p.name for p in sessions.iterdir()) == []


class FakeCheckouts:
    def planned(self, session, repo):
        return {"worktreePath": str(session.directory / "repo")}

    async def create(self, session, repo, on_progress):
        path = session.directory / "repo"
        path.mkdir()
        return Checkout(
            path=path,
            record=CheckoutRecord(RepoSource.GITHUB, f"pi/session-{session.id}", "main"),
        )

    async def remove(self, session):
        return {}


def test_the_end_of_a_code_sessions_run_is_passed_on(tmp_path):
    ended = []
    harness = Harness(tmp_path, checkouts=FakeCheckouts(), on_run_end=ended.append)
    d = ensureDeferred(harness.sessions.create(None, "code", repo={"id": "src"}))
    harness.answer_startup()
    code = d.result
    harness.process().stdout(b'{"type":"agent_start"}\n{"type":"agent_end","messages":[]}\n')
    # pi may go on after agent_end (a retry, compaction): the run ends when pi settles.
    assert ended == []
    harness.process().stdout(b'{"type":"agent_settled","aborted":false}\n')
    assert ended == [code]

    chat = create(harness).result
    harness.process().stdout(
        b'{"type":"agent_start"}\n{"type":"agent_end","messages":[]}\n'
        b'{"type":"agent_settled","aborted":false}\n'
    )
    assert chat.mode == "chat" and ended == [code]


def journal_descriptors(directory) -> int:
    """Descriptors of this process open on files in ``directory``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(directory))
    return count


def test_an_idle_session_holds_no_journal_descriptor(harness):
    session = create(harness).result
    journal_dir = session.directory / "journal"
    harness.sessions.publish(session, "note", {"type": "note", "n": 1})
    assert journal_descriptors(journal_dir) == 1
    harness.reactor.advance(121)
    assert journal_descriptors(journal_dir) == 0
    # It writes again when it has something to write, and replays across the pause.
    harness.sessions.publish(session, "note", {"type": "note", "n": 2})
    assert [event_type for _, event_type, _ in session.journal.replay(0)] == ["note", "note"]


def test_bad_state_entries_fall_back_to_session_json_one_by_one(tmp_path):
    first = Harness(tmp_path)
    wrong, empty, fine = (create(first).result for _ in range(3))
    first.sessions.stopService()
    state = json.loads((tmp_path / "state.json").read_text())
    state["sessions"][wrong.id]["createdAt"] = 5
    state["sessions"][empty.id] = {}
    (tmp_path / "state.json").write_text(json.dumps(state))

    second = Harness(tmp_path)
    listed = second.sessions.summaries()
    assert {s["sessionId"] for s in listed} == {wrong.id, empty.id, fine.id}
    assert second.store.get(empty.id)["mode"] == "chat"  # rewritten from session.json


def test_a_state_json_that_is_a_directory_does_not_stop_the_start(tmp_path):
    first = Harness(tmp_path)
    kept = create(first).result
    first.sessions.stopService()
    (tmp_path / "state.json").unlink()
    (tmp_path / "state.json").mkdir()

    second = Harness(tmp_path)
    assert list(second.sessions.sessions) == [kept.id]
    assert (tmp_path / "state.json").is_file() or second.store.get(kept.id) is not None


def test_numbering_continues_after_an_unreadable_last_journal_segment(tmp_path):
    limits = JournalLimits(segment_events=3)
    first = Harness(tmp_path, journal_limits=limits)
    session = create(first).result
    for n in range(10):
        first.sessions.publish(session, "note", {"type": "note", "n": n})
    sent = session.stream.seq
    first.sessions.stopService()
    segments = sorted((session.directory / "journal").glob("*.jrnl"))
    segments[-1].write_bytes(b"garbage, not a journal segment")

    second = Harness(tmp_path, journal_limits=limits)
    again = second.sessions.sessions[session.id]
    second.sessions.publish(again, "note", {"type": "note", "n": 10})
    assert again.stream.seq == sent + 1


class LaterThreads:
    """``in_thread`` that runs the work only when the test says so."""

    def __init__(self):
        self.waiting = []

    def __call__(self, f, *args, **kwargs):
        d = Deferred()
        self.waiting.append((d, f, args, kwargs))
        return d

    def run_all(self):
        waiting, self.waiting = self.waiting, []
        for d, f, args, kwargs in waiting:
            maybeDeferred(f, *args, **kwargs).chainDeferred(d)


def event_seqs(connection, session_id):
    return [
        f["seq"]
        for f in connection.sent
        if f.get("kind") == "event" and f["sessionId"] == session_id
    ]


def test_a_catch_up_is_built_off_the_reactor_and_stalls_no_other_session(tmp_path):
    threads = LaterThreads()
    harness = Harness(tmp_path, in_thread=threads)
    resumed, other = create(harness).result, create(harness).result
    for n in range(20):
        harness.sessions.publish(resumed, "note", {"type": "note", "n": n})
    late, watcher = FakeConnection("late"), FakeConnection("watcher")
    attaching = ensureDeferred(harness.sessions.attach(late, resumed, exclusive=False, last_seq=5))
    ensureDeferred(harness.sessions.attach(watcher, other, exclusive=False))
    # The catch-up waits for its thread; meanwhile everything else goes on.
    assert not attaching.called and len(threads.waiting) == 1
    harness.sessions.publish(resumed, "note", {"type": "note", "n": 20})
    harness.sessions.publish(other, "note", {"type": "note", "n": 0})
    assert event_seqs(watcher, other.id) == [other.stream.seq]
    assert event_seqs(late, resumed.id) == []
    threads.run_all()
    assert attaching.result == "replayed"
    # Every event after 5, once, in order: the catch-up, then what came meanwhile.
    assert event_seqs(late, resumed.id) == list(range(6, resumed.stream.seq + 1))


# -- warm agents ------------------------------------------------------------------


def warm_harness(tmp_path, **options):
    harness = Harness(tmp_path, warm_agents=1, **options)
    assert len(harness.reactor.spawned) == 1  # started with the service
    return harness


def test_a_create_is_handed_the_warm_agent_and_the_pool_refills(tmp_path):
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    warm_spawn = harness.reactor.spawned[0]
    (warm,) = harness.sessions.agents.warm.sessions()
    assert not (warm.directory / "session.json").exists()
    assert (warm.directory / "intent.json").exists()  # undone if the server dies now
    created = create(harness, system_prompt="Be brief.")
    session = created.result
    assert session is warm and session.agent.transport is warm_spawn.process
    assert len(harness.reactor.spawned) == 1  # nothing was started for the create
    assert (session.system_prompt_file).read_text() == "Be brief."
    assert not (session.directory / "intent.json").exists()
    assert harness.store.get(session.id)["systemPrompt"] == "Be brief."
    # The model the warm agent started on is pinned for restarts, as a cold one's is.
    assert harness.store.get(session.id)["modelId"] == "fake-1"
    assert harness.sessions.agents.warm.sessions() == []
    harness.reactor.advance(0.1)  # after the create's reply has gone out
    assert len(harness.reactor.spawned) == 2
    assert harness.sessions.agents.warm.sessions()[0].id != session.id


def test_a_warm_agent_still_starting_is_handed_over(tmp_path):
    harness = warm_harness(tmp_path)
    created = ensureDeferred(harness.sessions.create(None, "chat"))
    assert not created.called
    harness.answer_startup(n=0)
    assert created.result.agent.transport is harness.reactor.spawned[0].process


def test_a_create_with_a_model_sets_it_on_the_warm_agent(tmp_path):
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    created = ensureDeferred(
        harness.sessions.create(None, "chat", provider="fake", model_id="fake-2")
    )
    set_model = [c for c in harness.process(0).lines() if c["type"] == "set_model"]
    assert set_model[0]["provider"] == "fake" and set_model[0]["modelId"] == "fake-2"
    harness.answer("set_model", {"provider": "fake", "id": "fake-2"}, n=0)
    session = created.result
    assert (session.provider, session.model_id) == ("fake", "fake-2")
    assert harness.store.get(session.id)["modelId"] == "fake-2"


def test_code_sessions_and_copies_start_their_own_agent(tmp_path):
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    copied = ensureDeferred(harness.sessions.create(None, "chat", seed=lambda session: None))
    assert len(harness.reactor.spawned) == 2  # a copy needs its files before pi starts
    harness.answer_startup()
    assert copied.result.agent.transport is harness.process(1)
    assert len(harness.sessions.agents.warm.sessions()) == 1


def test_warm_agents_count_against_the_limit_and_go_first(tmp_path):
    harness = warm_harness(tmp_path, max_agents=2)
    harness.answer_startup()
    busy = create(harness).result  # the warm one
    harness.reactor.advance(0.1)  # the pool refills: two agents hold places now
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    busy.streaming = True
    copied = ensureDeferred(harness.sessions.create(None, "chat", seed=lambda session: None))
    # Room is made by stopping the warm agent.
    harness.answer("abort", n=1)
    harness.process(1).end(code=0)
    harness.answer_startup()
    assert copied.result.agent.transport is harness.process(2)
    assert not warm.directory.exists()
    assert harness.sessions.agents.warm.sessions() == []


def test_the_pool_does_not_fill_beyond_the_limit(tmp_path):
    harness = warm_harness(tmp_path, max_agents=1)
    harness.answer_startup()
    session = create(harness).result
    harness.reactor.advance(0.1)
    assert len(harness.reactor.spawned) == 1 and session.idle()
    assert harness.sessions.agents.warm.sessions() == []


def test_an_idle_warm_agent_stops_and_the_pool_fills_when_a_client_comes(tmp_path):
    harness = warm_harness(tmp_path, idle_timeout=600)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    harness.reactor.advance(660)
    harness.answer("abort", n=0)
    harness.process(0).end(code=0)
    assert harness.sessions.agents.warm.sessions() == [] and not warm.directory.exists()
    harness.sessions.watch(FakeConnection("c2"))
    assert len(harness.reactor.spawned) == 2


def test_a_warm_agent_that_cannot_start_is_not_restarted_for_nobody(tmp_path):
    harness = warm_harness(tmp_path)
    (warm,) = harness.sessions.agents.warm.sessions()
    harness.process(0).end(code=1)
    assert harness.sessions.agents.warm.sessions() == [] and not warm.directory.exists()
    harness.reactor.advance(60)
    assert len(harness.reactor.spawned) == 1
    # The next create starts a cold agent.
    created = create(harness)
    assert created.result.agent.transport is harness.process(1)


def test_stopping_the_server_removes_the_warm_agents_directories(tmp_path):
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    stopped = harness.sessions.stopService()
    harness.answer("abort", n=0)
    harness.process(0).end(code=0)
    assert stopped.called and not warm.directory.exists()


def test_a_warm_agent_older_than_pi_s_configuration_is_not_handed_over(tmp_path):
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    (tmp_path / "extensions").mkdir()  # a pi extension installed meanwhile
    created = create(harness)
    assert created.result is not warm
    assert created.result.agent.transport is harness.process(1)
    harness.answer("abort", n=0)
    harness.process(0).end(code=0)
    assert not warm.directory.exists()


def test_a_create_handed_a_warm_agent_rewrites_neither_its_mode_nor_its_tools(tmp_path):
    """Each file written is two fsyncs of the create's time (bench/warmcreate.py): the
    warm session's permission and (empty) tools files stand as they are."""
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    before = {f: os.stat(f).st_ino for f in (warm.permission_file, warm.native_tools_file)}
    assert create(harness).result is warm
    assert {f: os.stat(f).st_ino for f in before} == before
    # Another mode is written, of course.
    created = create(harness, permissions=Permissions(mode=PermissionMode.ASK))
    assert json.loads(created.result.permission_file.read_text()) == {"mode": "ask"}


def test_a_changing_file_pi_does_not_read_keeps_the_warm_agent(tmp_path):
    """Issue 21 point 18: only what pi reads makes a warm agent stale."""
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    (tmp_path / "pi-server.log").write_text("a log line\n")
    (tmp_path / "notes.txt").write_text("the user's notes\n")
    assert create(harness).result is warm


def test_the_pool_refills_after_discarding_a_stale_warm_agent(tmp_path):
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    (tmp_path / "models.json").write_text("{}")  # pi's configuration changed
    created = create(harness)
    assert created.result is not warm
    harness.answer("abort", n=0)
    harness.process(0).end(code=0)
    harness.reactor.advance(0.1)
    assert len(harness.reactor.spawned) == 3
    (refilled,) = harness.sessions.agents.warm.sessions()
    assert refilled is not warm and refilled is not created.result


def test_observers_hear_of_a_run_from_its_events(harness):
    heard = []

    class Observer(SessionObserver):
        def run_started(self, session):
            heard.append(("run_started", session.id))

        def run_ended(self, session, outcome, summary):
            heard.append(("run_ended", outcome, summary))

    harness.sessions.observers.add(Observer())
    session = create(harness, FakeConnection()).result
    harness.process().stdout(
        b'{"type":"agent_start"}\n{"type":"message_update"}\n{"type":"agent_settled"}\n'
    )
    assert heard == [("run_started", session.id), ("run_ended", "ok", "the run finished")]


def test_a_create_that_fails_undoes_the_warm_session_it_took(tmp_path):
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    connection = FakeConnection()
    connection.features = None  # attaching it fails
    created = create(harness, connection)
    harness.answer("abort", n=0)
    harness.process(0).end(code=0)
    assert isinstance(created.result, Failure) and created.result.check(TypeError)
    created.addErrback(lambda f: None)
    assert not warm.directory.exists() and harness.sessions.sessions == {}
    harness.reactor.advance(0.1)
    assert len(harness.sessions.agents.warm.sessions()) == 1  # the pool fills again


def test_a_warm_agent_that_dies_waiting_leaves_the_pool(tmp_path):
    harness = warm_harness(tmp_path)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    harness.process(0).end(code=1)
    assert harness.sessions.agents.warm.sessions() == [] and not warm.directory.exists()
    harness.sessions.watch(FakeConnection("c2"))  # the next client fills the pool again
    assert len(harness.reactor.spawned) == 2


@pytest.mark.parametrize("discard", ["died", "idle"])
def test_after_any_discard_the_next_create_refills_the_pool(tmp_path, discard):
    """Issue 21 point 18: no client needs to come again for the pool to fill."""
    harness = warm_harness(tmp_path, idle_timeout=600)
    harness.answer_startup()
    (warm,) = harness.sessions.agents.warm.sessions()
    if discard == "died":
        harness.process(0).end(code=1)
    else:
        harness.reactor.advance(660)
        harness.answer("abort", n=0)
        harness.process(0).end(code=0)
    assert harness.sessions.agents.warm.sessions() == []
    created = create(harness)
    assert created.result is not warm and created.result.agent.transport is harness.process(1)
    harness.reactor.advance(0.1)
    assert len(harness.reactor.spawned) == 3
    (refilled,) = harness.sessions.agents.warm.sessions()
    assert refilled is not created.result


def test_a_code_sessions_record_round_trips_through_its_typed_checkout(tmp_path):
    """session.json's fields are as before; the checkout is read into a CheckoutRecord."""
    record = {
        "sessionId": "0b6c2a8e-1f0e-4c55-9d7e-5b3f1d2c4a6e",
        "mode": "code",
        "repoId": "local:app",
        "worktreePath": str(tmp_path / "repo"),
        "createdAt": "2026-01-01T00:00:00Z",
        "lastActivityAt": "2026-01-01T00:00:00Z",
        "name": None,
        "provider": None,
        "modelId": None,
        "systemPrompt": None,
        "includeNativeTools": False,
        "permissionMode": "rules",
        "permissionRules": [{"tool": "bash", "pattern": "make*", "action": "allow"}],
        "permissionGrants": [{"tool": "bash", "prefix": "git status"}],
        "lastSeq": 3,
        "repoSource": "local",
        "repoPath": "/src/app",
        "branch": "pi/session-0b6c2a8e-1f0e-4c55-9d7e-5b3f1d2c4a6e",
        "baseBranch": "main",
        "forkedFrom": "5d0c3a4b-2e1f-4a3b-8c7d-6e5f4a3b2c1d",
        "fromANewerVersion": [1],
    }
    session = Session.from_record(tmp_path, record)
    assert session.checkout == CheckoutRecord(
        RepoSource.LOCAL, record["branch"], "main", repo_path="/src/app"
    )
    assert session.forked_from == record["forkedFrom"]
    assert session.record() == record
    # A clone of a local repository says so in its record (a record without says a
    # worktree of old): the server never asks the checkout's .git, which the agent owns.
    cloned = Session.from_record(tmp_path, {**record, "localClone": True})
    assert cloned.checkout.local_clone and not session.checkout.local_clone
    assert cloned.record() == {**record, "localClone": True}
    chat = Session.from_record(tmp_path, {**record, "mode": "chat", "repoSource": None})
    assert chat.checkout is None
    with pytest.raises(ValueError):
        Session.from_record(tmp_path, {**record, "branch": 7})
