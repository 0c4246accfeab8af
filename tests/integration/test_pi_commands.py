"""
pi 1.6's RPC commands over /rpc, each against the real agent: typed commands, the
server's own meaning of fork/clone/new_session/switch_session/export_html, and an
unknown command name passed through to pi.
"""

import json
import subprocess

import pytest
import pytest_twisted
from twisted.python import usage

from piserver.api import methods
from piserver.tap import Options
from tests.support.fakellm import Hang, Reply, Text, Tokens, ToolCall
from tests.support.piagent import locate_pi
from tests.support.wsclient import CallFailed, is_type


def first_delta(session_id):
    return lambda f: (
        f["type"] == "message_update"
        and f["sessionId"] == session_id
        and f["payload"]["assistantMessageEvent"]["type"] == "text_delta"
    )


def texts(messages, role):
    return [
        "".join(part.get("text", "") for part in m["content"] if isinstance(part, dict))
        for m in messages
        if m["role"] == role
    ]


async def chat(client):
    return (await client.call("session.create", {"mode": "chat"}))["sessionId"]


async def run(client, session_id, message):
    await client.call("prompt", {"message": message}, session_id=session_id)
    await client.wait_for_event(is_type("agent_settled", session_id))


@pytest_twisted.ensureDeferred
async def test_the_agent_and_node_versions_are_reported(pi_server):
    client = await pi_server.client(hello=False)
    hello = await client.call("hello", {"client": {"name": "t", "version": "1"}})
    assert hello["agent"]["version"] == "1.6.0"
    assert hello["agent"]["package"] == "@earendil-works/pi-coding-agent"
    node_major, node_minor = (int(part) for part in hello["agent"]["node"].split(".")[:2])
    assert (node_major, node_minor) >= (22, 19)


def test_pi_on_a_node_too_old_for_it_is_a_start_up_error(tmp_path):
    command = locate_pi()
    machine_node = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, check=False
    )
    if (
        len(command) == 1
        or machine_node.returncode != 0
        or int(machine_node.stdout.lstrip("v").split(".")[0]) >= 22
    ):
        pytest.skip("no Node.js older than pi needs on this machine")
    # The pi script alone, as `npm install -g` leaves it: `#!/usr/bin/env node` runs the
    # machine's old Node.js, where pi 1.6 fails at import.
    options = Options(environ={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    with pytest.raises(usage.UsageError) as refused:
        options.parseOptions(["--data-dir", str(tmp_path / "d"), "--pi", command[-1]])
    message = str(refused.value)
    assert "--version failed" in message
    assert "needs Node.js >= 22.19" in message
    assert "scripts/install-pi" in message


@pytest_twisted.ensureDeferred
async def test_steer_and_follow_up_while_a_slow_answer_streams(pi_server, fake_llm):
    fake_llm.script(Tokens(400, delay=0.01), Text("steered"), Text("followed up"))
    client = await pi_server.client()
    session_id = await chat(client)
    await client.call("prompt", {"message": "slow"}, session_id=session_id)
    await client.wait_for_event(first_delta(session_id))
    steered = await client.call("steer", {"message": "change course"}, session_id=session_id)
    followed = await client.call("follow_up", {"message": "and then this"}, session_id=session_id)
    assert steered == {"disposition": "queued"} and followed == {"disposition": "queued"}
    await client.wait_for_event(is_type("agent_settled", session_id))
    messages = (await client.call("get_messages", session_id=session_id))["messages"]
    users = texts(messages, "user")
    assert users == ["slow", "change course", "and then this"]
    assert texts(messages, "assistant")[-2:] == ["steered", "followed up"]
    queue_updates = [f for f in client.event_frames(session_id) if f["type"] == "queue_update"]
    assert queue_updates


@pytest_twisted.ensureDeferred
async def test_clear_queue_returns_what_was_queued(pi_server, fake_llm):
    fake_llm.script(Reply(Tokens(5), Hang()))
    client = await pi_server.client()
    session_id = await chat(client)
    await client.call("prompt", {"message": "hang"}, session_id=session_id)
    await client.wait_for_event(first_delta(session_id))
    await client.call("follow_up", {"message": "later"}, session_id=session_id)
    cleared = await client.call("clear_queue", session_id=session_id)
    assert cleared == {"steering": [], "followUp": ["later"]}
    await client.call("abort", session_id=session_id)
    await client.wait_for_event(is_type("agent_settled", session_id))


@pytest_twisted.ensureDeferred
async def test_compact_summarises_the_conversation(pi_server, fake_llm, agent_dir):
    # Keep no recent tokens out of the summary, so that a short conversation compacts.
    settings = json.loads(agent_dir.settings_path.read_text())
    settings["compaction"] = {"keepRecentTokens": 1}
    agent_dir.settings_path.write_text(json.dumps(settings))
    fake_llm.script(Text("first answer"), Text("A summary of it all."))
    client = await pi_server.client()
    session_id = await chat(client)
    await run(client, session_id, "hello")
    compacted = await client.call(
        "compact", {"customInstructions": "be short"}, session_id=session_id
    )
    assert "A summary of it all." in compacted["summary"]
    assert "firstKeptEntryId" in compacted
    summary_request = fake_llm.requests[-1]
    assert "be short" in str(summary_request["messages"])
    with pytest.raises(CallFailed) as bad:
        await client.call("compact", {"customInstructions": 7}, session_id=session_id)
    assert bad.value.code == "invalid_params"


@pytest_twisted.ensureDeferred
async def test_bash_output_streams_as_events(pi_server):
    client = await pi_server.client()
    session_id = await chat(client)
    result = await client.call("bash", {"command": "echo one; echo two"}, session_id=session_id)
    assert result["output"] == "one\ntwo\n" and result["exitCode"] == 0
    updates = [f for f in client.event_frames(session_id) if f["type"] == "bash_execution_update"]
    assert "".join(f["payload"]["delta"] for f in updates) == "one\ntwo\n"
    assert await client.call("abort_bash", session_id=session_id) == {}
    with pytest.raises(CallFailed) as empty:
        await client.call("bash", {"command": "  "}, session_id=session_id)
    assert empty.value.code == "invalid_params"


@pytest_twisted.ensureDeferred
async def test_thinking_level_and_queue_modes_show_in_get_state(pi_server):
    client = await pi_server.client()
    session_id = await chat(client)
    await client.call("set_model", {"provider": "fake", "modelId": "fake-2"}, session_id=session_id)
    levels = await client.call("get_available_thinking_levels", session_id=session_id)
    assert "high" in levels["levels"]
    await client.call("set_thinking_level", {"level": "high"}, session_id=session_id)
    await client.call("set_steering_mode", {"mode": "all"}, session_id=session_id)
    await client.call("set_follow_up_mode", {"mode": "all"}, session_id=session_id)
    await client.call("set_auto_compaction", {"enabled": False}, session_id=session_id)
    await client.call("set_auto_retry", {"enabled": False}, session_id=session_id)
    assert await client.call("abort_retry", session_id=session_id) == {}
    state = await client.call("get_state", session_id=session_id)
    assert state["thinkingLevel"] == "high"
    assert (state["steeringMode"], state["followUpMode"]) == ("all", "all")
    assert state["autoCompactionEnabled"] is False
    cycled = await client.call("cycle_thinking_level", session_id=session_id)
    assert cycled["level"] != "high"
    with pytest.raises(CallFailed) as bad:
        await client.call("set_thinking_level", {"level": "extreme"}, session_id=session_id)
    assert bad.value.code == "invalid_params"

    # Each session's settings are its own, and survive a restart of its agent.
    other = await chat(client)
    assert (await client.call("get_state", session_id=other))["steeringMode"] == "one-at-a-time"
    await pi_server.sessions.sessions[session_id].lifecycle.stop()
    again = await client.call("get_state", session_id=session_id)
    assert (again["steeringMode"], again["autoCompactionEnabled"]) == ("all", False)


@pytest_twisted.ensureDeferred
async def test_session_queries(pi_server, fake_llm):
    fake_llm.script(Text("the answer"))
    client = await pi_server.client()
    session_id = await chat(client)
    await run(client, session_id, "a question")
    stats = await client.call("get_session_stats", session_id=session_id)
    assert stats["userMessages"] == 1 and stats["assistantMessages"] == 1
    last = await client.call("get_last_assistant_text", session_id=session_id)
    assert last == {"text": "the answer"}
    assert "commands" in await client.call("get_commands", session_id=session_id)
    entries = await client.call("get_entries", session_id=session_id)
    assert entries["leafId"] == entries["entries"][-1]["id"]
    since = await client.call(
        "get_entries", {"since": entries["entries"][0]["id"]}, session_id=session_id
    )
    assert since["entries"] == entries["entries"][1:]
    tree = await client.call("get_tree", session_id=session_id)
    assert tree["leafId"] == entries["leafId"] and tree["tree"]
    forkable = await client.call("get_fork_messages", session_id=session_id)
    assert [m["text"] for m in forkable["messages"]] == ["a question"]


@pytest_twisted.ensureDeferred
async def test_session_name_shows_in_the_list(pi_server):
    client = await pi_server.client()
    session_id = await chat(client)
    assert (
        await client.call("set_session_name", {"name": "  my work "}, session_id=session_id) == {}
    )
    listed = (await client.call("session.list"))["sessions"]
    assert [s["name"] for s in listed if s["sessionId"] == session_id] == ["my work"]
    assert (await client.call("get_state", session_id=session_id))["sessionName"] == "my work"
    with pytest.raises(CallFailed) as empty:
        await client.call("set_session_name", {"name": " "}, session_id=session_id)
    assert empty.value.code == "invalid_params"


@pytest_twisted.ensureDeferred
async def test_fork_makes_a_new_listed_session_with_the_forked_turns(pi_server, fake_llm):
    fake_llm.script(Text("answer one"), Text("answer two"), Text("fork answer"))
    client = await pi_server.client()
    session_id = await chat(client)
    await run(client, session_id, "question one")
    await run(client, session_id, "question two")
    forkable = (await client.call("get_fork_messages", session_id=session_id))["messages"]
    second = next(m for m in forkable if m["text"] == "question two")

    forked = await client.call("fork", {"entryId": second["entryId"]}, session_id=session_id)

    fork_id = forked["sessionId"]
    assert fork_id != session_id and forked["text"] == "question two"
    listed = {s["sessionId"] for s in (await client.call("session.list"))["sessions"]}
    assert {session_id, fork_id} <= listed
    # The fork holds the turns before the chosen message; the original is unchanged.
    fork_messages = (await client.call("get_messages", session_id=fork_id))["messages"]
    assert texts(fork_messages, "user") == ["question one"]
    assert texts(fork_messages, "assistant") == ["answer one"]
    original = (await client.call("get_messages", session_id=session_id))["messages"]
    assert texts(original, "user") == ["question one", "question two"]
    # The fork goes on by itself, also after its agent restarts.
    await run(client, fork_id, "fork question")
    await pi_server.sessions.sessions[fork_id].lifecycle.stop()
    again = (await client.call("get_messages", session_id=fork_id))["messages"]
    assert texts(again, "user") == ["question one", "fork question"]
    assert (
        pi_server.sessions.sessions[fork_id].directory
        != pi_server.sessions.sessions[session_id].directory
    )


@pytest_twisted.ensureDeferred
async def test_clone_copies_the_whole_conversation(pi_server, fake_llm):
    fake_llm.script(Text("answer one"))
    client = await pi_server.client()
    session_id = await chat(client)
    await run(client, session_id, "question one")
    cloned = await client.call("clone", session_id=session_id)
    messages = (await client.call("get_messages", session_id=cloned["sessionId"]))["messages"]
    assert texts(messages, "user") == ["question one"]
    assert texts(messages, "assistant") == ["answer one"]


@pytest_twisted.ensureDeferred
async def test_new_session_clears_and_switch_session_is_refused(pi_server, fake_llm):
    client = await pi_server.client()
    session_id = await chat(client)
    await run(client, session_id, "forget me")
    assert await client.call("new_session", session_id=session_id) == {"cancelled": False}
    messages = (await client.call("get_messages", session_id=session_id))["messages"]
    assert texts(messages, "user") == []
    with pytest.raises(CallFailed) as refused:
        await client.call("switch_session", {"sessionPath": "/etc/passwd"}, session_id=session_id)
    assert refused.value.code == "invalid_request"


@pytest_twisted.ensureDeferred
async def test_export_html_returns_the_page_and_leaves_no_file(pi_server, fake_llm):
    fake_llm.script(Text("exported answer"))
    client = await pi_server.client()
    session_id = await chat(client)
    await run(client, session_id, "export me")
    exported = await client.call(
        "export_html", {"outputPath": "/tmp/x.html"}, session_id=session_id
    )
    assert exported["html"].lstrip().lower().startswith("<!doctype html")
    session = pi_server.sessions.sessions[session_id]
    assert not list(session.directory.rglob("*.html"))
    assert not list(session.cwd.rglob("*.html"))


@pytest_twisted.ensureDeferred
async def test_an_unknown_command_goes_to_pi_and_pi_answers(pi_server, fake_llm):
    client = await pi_server.client()
    session_id = await chat(client)
    with pytest.raises(CallFailed) as unknown:
        await client.call("teleport", {"where": "mars"}, session_id=session_id)
    assert unknown.value.code == "unknown_method"
    assert "Unknown command: teleport" in unknown.value.message
    # Without a session it is no pi command at all.
    with pytest.raises(CallFailed) as no_session:
        await client.call("teleport")
    assert no_session.value.code == "unknown_method"


@pytest_twisted.ensureDeferred
async def test_a_command_the_server_does_not_type_passes_through(
    make_pi_server, fake_llm, monkeypatch
):
    # As if pi had added get_last_assistant_text after this server was written.
    monkeypatch.setattr(
        methods,
        "TYPED",
        {
            name: command
            for name, command in methods.TYPED.items()
            if name != "get_last_assistant_text"
        },
    )
    server = make_pi_server()
    fake_llm.script(Text("passed through"))
    client = await server.client()
    session_id = await chat(client)
    await run(client, session_id, "hi")
    answer = await client.call(
        "get_last_assistant_text",
        {"type": "get_last_assistant_text", "id": "x"},
        session_id=session_id,
    )
    assert answer == {"text": "passed through"}


@pytest_twisted.ensureDeferred
async def test_a_snapshot_mid_answer_shows_the_message_so_far(pi_server, fake_llm):
    fake_llm.script(
        Reply(
            Text("visible so far", words_per_chunk=1),
            ToolCall("bash", {"command": "true"}, delay=0.0),
            Hang(),
        )
    )
    client = await pi_server.client()
    session_id = await chat(client)
    await client.call("prompt", {"message": "go"}, session_id=session_id)
    await client.wait_for_event(
        lambda f: (
            f["type"] == "message_update"
            and f["sessionId"] == session_id
            and f["payload"]["assistantMessageEvent"]["type"] == "toolcall_delta"
        )
    )
    late = await pi_server.client(features=["snapshots"])
    # A seq beyond the journal cannot be replayed: the late client gets a snapshot.
    await late.call(
        "session.attach", {"sessionId": session_id, "lastSeq": 10**9, "exclusive": False}
    )
    snapshot = await late.wait_for_event(is_type("session_snapshot", session_id))
    streaming = snapshot["payload"]["streamingMessage"]
    assert streaming["role"] == "assistant"
    assert streaming["content"][0] == {"type": "text", "text": "visible so far"}
    assert streaming["content"][1]["type"] == "toolCall"
    assert streaming["content"][1]["name"] == "bash"
    await client.call("abort", session_id=session_id)
    await client.wait_for_event(is_type("agent_settled", session_id))
