"""
The event stream over real sockets with the real pi agent: per-session seq,
the journal, exact resume after a dropped connection, snapshots, delta mode,
restarts and slow clients.
"""

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from piserver.sessions.observer import SessionObserver
from tests.support.fakellm import Reply, Text, Tokens
from tests.support.wsclient import is_type

HELLO = {"client": {"name": "tests", "version": "1"}}
# A client that reads snapshots and pi's messages as they are (the web and script clients).
SNAPSHOT_HELLO = {**HELLO, "features": ["snapshots", "piMessages"]}


def deltas(frames):
    return "".join(
        f["payload"]["assistantMessageEvent"]["delta"]
        for f in frames
        if f["type"] == "message_update"
        and f["payload"]["assistantMessageEvent"]["type"] == "text_delta"
    )


def seqs(client, session_id):
    return [f["seq"] for f in client.event_frames(session_id)]


def after_n_deltas(n):
    count = {"seen": 0}

    def predicate(frame):
        if (
            frame["type"] == "message_update"
            and frame["payload"]["assistantMessageEvent"]["type"] == "text_delta"
        ):
            count["seen"] += 1
        return count["seen"] >= n

    return predicate


class RunEnded(SessionObserver):
    """Fires ``ended`` when a run has ended: pi settled it, and the server relayed that."""

    def __init__(self, ended: Deferred):
        self.ended = ended

    def run_ended(self, session, outcome, summary):
        if not self.ended.called:
            self.ended.callback(outcome)


async def new_session(client):
    return (await client.call("session.create", {"mode": "chat"}))["sessionId"]


@pytest.fixture
def small_journal_server(make_pi_server):
    # A journal too small for one answer, so an old position is soon gone.
    return make_pi_server("--journal-max-events", "40")


@pytest_twisted.ensureDeferred
async def test_drop_and_resume_loses_nothing(small_journal_server, fake_llm):
    server = small_journal_server
    answer = Tokens(150, delay=0.01)
    fake_llm.script(answer)
    phone = await server.client()
    session_id = await new_session(phone)
    watcher = await server.client()
    await watcher.call("session.attach", {"sessionId": session_id, "exclusive": False})

    await phone.call("prompt", {"message": "count"}, session_id=session_id)
    await phone.wait_for_event(after_n_deltas(5))
    await phone.drop()  # no close handshake, as when a phone loses its network
    seen = list(phone.event_frames(session_id))
    last = seen[-1]["seq"]
    # The answer goes on while the phone is away.
    await watcher.wait_for_event(lambda f: f["seq"] >= last + 10)

    resumed = await server.client(hello=False)
    hello = await resumed.call(
        "hello",
        {**HELLO, "resume": {"connectionId": "old", "lastSeqBySession": {session_id: last}}},
    )
    assert hello["resumed"] == {session_id: "replayed"}
    await resumed.wait_for_event(is_type("agent_settled", session_id))
    await watcher.wait_for_event(is_type("agent_settled", session_id))

    combined = seen + resumed.event_frames(session_id)
    numbers = [f["seq"] for f in combined]
    assert numbers == list(range(1, len(numbers) + 1))  # every seq once, in order
    assert deltas(combined) == answer.text
    assert seqs(watcher, session_id) == numbers

    # The journal holds only the last 40 events: resuming from seq 1 needs a snapshot.
    late = await server.client(hello=False)
    hello = await late.call(
        "hello",
        {
            **SNAPSHOT_HELLO,
            "resume": {"connectionId": "older", "lastSeqBySession": {session_id: 1}},
        },
    )
    assert hello["resumed"] == {session_id: "snapshot"}
    (snapshot,) = late.event_frames(session_id)
    assert snapshot["type"] == "session_snapshot"
    assert snapshot["seq"] == numbers[-1]
    payload = snapshot["payload"]
    assert payload["reason"] == "journal_trimmed"
    assert [m["role"] for m in payload["messages"]] == ["system", "user", "assistant"]
    assert payload["state"]["isStreaming"] is False
    assert payload["streamingMessage"] is None

    # Live events follow the snapshot.
    await late.call("prompt", {"message": "more"}, session_id=session_id)
    end = await late.wait_for_event(is_type("agent_settled", session_id))
    assert end["seq"] > snapshot["seq"]


@pytest_twisted.ensureDeferred
async def test_events_without_any_client_are_replayed_on_attach(pi_server, fake_llm):
    fake_llm.script(Text("nobody was watching"))
    client = await pi_server.client()
    session_id = await new_session(client)
    await client.call("session.detach")
    settled = Deferred()
    pi_server.sessions.observers.add(RunEnded(settled))
    await client.call("prompt", {"message": "hello?"}, session_id=session_id)
    # (The LLM's answer having ended is not pi having settled the run.)
    await settled
    state = await client.call("get_state", session_id=session_id)  # the run is over
    assert state["isStreaming"] is False
    assert client.event_frames(session_id) == []

    attached = await client.call("session.attach", {"sessionId": session_id, "lastSeq": 0})
    assert attached["catchUp"] == "replayed"
    frames = client.event_frames(session_id)
    assert [f["seq"] for f in frames] == list(range(1, attached["lastSeq"] + 1))
    assert frames[-1]["type"] == "agent_settled"
    assert deltas(frames) == "nobody was watching"


@pytest_twisted.ensureDeferred
async def test_seq_and_journal_survive_a_restart(pi_server, fake_llm):
    fake_llm.script(Text("before restart"), Text("after restart"))
    client = await pi_server.client()
    session_id = await new_session(client)
    await client.call("prompt", {"message": "one"}, session_id=session_id)
    await client.wait_for_event(is_type("agent_settled", session_id))
    last_before = seqs(client, session_id)[-1]

    await pi_server.restart()
    client = await pi_server.client()
    attached = await client.call("session.attach", {"sessionId": session_id, "lastSeq": 0})
    assert attached["catchUp"] == "replayed" and attached["lastSeq"] == last_before
    assert seqs(client, session_id) == list(range(1, last_before + 1))
    assert deltas(client.event_frames(session_id)) == "before restart"

    await client.call("prompt", {"message": "two"}, session_id=session_id)
    await client.wait_for_event(lambda f: f["type"] == "agent_settled" and f["seq"] > last_before)
    numbers = seqs(client, session_id)
    assert numbers == list(range(1, len(numbers) + 1))
    assert deltas(client.event_frames(session_id)) == "before restartafter restart"


@pytest_twisted.ensureDeferred
async def test_delta_mode_same_text_far_fewer_bytes(pi_server, fake_llm):
    answer = Tokens(2000)
    fake_llm.script(answer)
    full = await pi_server.client()
    delta = await pi_server.client(eventMode="delta")
    squeezed = await pi_server.client(eventMode="delta", deflate=True)
    session_id = await new_session(full)
    for client in (delta, squeezed):
        await client.call("session.attach", {"sessionId": session_id, "exclusive": False})
    start = {c: c.payload_bytes for c in (full, delta, squeezed)}
    wire_start = {c: c.wire_bytes for c in (full, delta, squeezed)}

    await full.call("prompt", {"message": "2000 tokens please"}, session_id=session_id)
    for client in (full, delta, squeezed):
        await client.wait_for_event(is_type("agent_settled", session_id))

    for client in (full, delta, squeezed):
        assert deltas(client.event_frames(session_id)) == answer.text
        ends = [f for f in client.event_frames(session_id) if f["type"] == "message_end"]
        assert ends[-1]["payload"]["message"]["content"][0]["text"] == answer.text
    full_bytes = full.payload_bytes - start[full]
    delta_bytes = delta.payload_bytes - start[delta]
    # pi 1.x sends deltas with the usage so far on each: delta mode drops the usage and
    # merges the deltas.
    assert full_bytes >= 8 * delta_bytes
    # Merged deltas: far fewer frames than pi's 2,000 updates.
    assert len(delta.event_frames(session_id)) < len(full.event_frames(session_id)) / 2
    deflated_wire = squeezed.wire_bytes - wire_start[squeezed]
    assert deflated_wire < delta.wire_bytes - wire_start[delta]
    # A delta-mode client's seqs only move forward and end where full mode ends.
    delta_seqs = seqs(delta, session_id)
    assert delta_seqs == sorted(set(delta_seqs))
    assert delta_seqs[-1] == seqs(full, session_id)[-1]


@pytest.fixture
def tight_buffer_server(make_pi_server):
    return make_pi_server("--send-buffer-limit", "1048576")


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_cut_off(tight_buffer_server, fake_llm):
    server = tight_buffer_server
    answer = Tokens(2000)
    fake_llm.script(Reply(answer))
    reader = await server.client()
    session_id = await new_session(reader)
    stalled = await server.client()
    stalled_id = stalled.connection_id
    await stalled.call("session.attach", {"sessionId": session_id, "exclusive": False})
    await reader.call("session.attach", {"sessionId": session_id, "exclusive": False})
    gone = Deferred()
    server.hub.connections[stalled_id].on_lost(lambda connection: gone.callback(None))
    stalled.protocol.transport.pauseProducing()  # stop reading from the socket

    await reader.call("prompt", {"message": "flood"}, session_id=session_id)
    await gone
    await reader.wait_for_event(is_type("agent_settled", session_id))
    numbers = seqs(reader, session_id)
    assert numbers == list(range(1, len(numbers) + 1))
    assert deltas(reader.event_frames(session_id)) == answer.text


@pytest.mark.parametrize("mode", ["full", "delta"])
@pytest_twisted.ensureDeferred
async def test_resume_while_streaming_in_each_mode(pi_server, fake_llm, mode):
    answer = Tokens(120, delay=0.01)
    fake_llm.script(answer)
    phone = await pi_server.client(eventMode=mode)
    session_id = await new_session(phone)
    await phone.call("prompt", {"message": "go"}, session_id=session_id)
    await phone.wait_for_event(after_n_deltas(3))
    await phone.drop()
    seen = list(phone.event_frames(session_id))
    await fake_llm.wait_for_request(1)

    again = await pi_server.client(hello=False)
    await again.call(
        "hello",
        {
            **HELLO,
            "eventMode": mode,
            "resume": {"connectionId": "x", "lastSeqBySession": {session_id: seen[-1]["seq"]}},
        },
    )
    await again.wait_for_event(is_type("agent_settled", session_id))
    combined = seen + again.event_frames(session_id)
    numbers = [f["seq"] for f in combined]
    assert numbers == sorted(set(numbers))
    assert deltas(combined) == answer.text
