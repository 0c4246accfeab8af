"""
The seed's iOS app against pi-server on pi 1.6, frame by frame: its exact requests
(binary, its current session in every envelope, its param shapes), every answer
decoded as strictly as the app decodes it (tests/support/seedclient.py). This is the
compatibility suite: a change that would break the app fails here.
"""

import json
import os
import signal

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.fakegithub import make_repository
from tests.support.fakellm import Reply, Text, Tokens, ToolCall
from tests.support.seedclient import AppError, SeedApp, decode_messages
from tests.support.server import TOKEN

LOCATION = {
    "name": "get_location",
    "description": "Where the phone is",
    "parameters": {"type": "object", "properties": {}},
}


@pytest.fixture
def app(pi_server):
    return SeedApp(reactor, pi_server.port, TOKEN)


def listed(result):
    return {s["sessionId"] for s in result["sessions"]}


@pytest_twisted.ensureDeferred
async def test_attach_and_delete_act_on_the_session_named_in_params(app):
    await app.connect()
    first = await app.create_chat()
    second = await app.create_chat()
    assert app.current == second
    # The envelope names the current session (second); the target is first.
    attached = await app.attach(first)
    assert attached["sessionId"] == first
    third = await app.create_chat()
    assert app.current == third
    await app.delete(first)
    assert listed(await app.call("session.list")) == {second, third}
    assert app.failures == []


@pytest_twisted.ensureDeferred
async def test_detaching_from_a_deleted_session_succeeds(app):
    await app.connect()
    session_id = await app.create_chat()
    await app.delete(session_id)
    # The app still has it as its current session, and clears it only on success.
    assert app.current == session_id
    await app.detach()
    assert app.current is None
    # Detaching again, from nothing, is fine too.
    assert await app.call("session.detach") == {}


@pytest_twisted.ensureDeferred
async def test_resume_during_a_long_answer_rebuilds_the_whole_text(app, pi_server, fake_llm):
    answer = Tokens(1500, delay=0.002)
    fake_llm.script(answer)
    watcher = await pi_server.client()
    await app.connect()
    session_id = await app.create_chat()
    await watcher.call("session.attach", {"sessionId": session_id, "exclusive": False})
    await app.prompt("a long one")
    await app.client.wait_for_event(
        lambda f: (
            f["type"] == "message_update"
            and f["sessionId"] == session_id
            and f["payload"]["assistantMessageEvent"]["type"] == "text_delta"
        )
    )
    await app.client.drop()
    await watcher.wait_for_event(lambda f: f["type"] == "agent_settled")
    before = app.events(session_id)

    hello = await app.connect()

    assert hello["resumed"] == {session_id: "replayed"}
    await app.wait_for("agent_end", session_id)
    after = app.events(session_id)
    assert after[-1]["type"] == "agent_settled"
    combined = before + after
    text = "".join(
        f["payload"]["assistantMessageEvent"].get("delta", "")
        for f in combined
        if f["type"] == "message_update"
        and f["payload"]["assistantMessageEvent"]["type"] == "text_delta"
    )
    assert text == answer.text
    seqs = [f["seq"] for f in combined]
    assert seqs == sorted(set(seqs))
    [end] = [
        f
        for f in after
        if f["type"] == "message_end" and f["payload"]["message"]["role"] == "assistant"
    ]
    assert end["payload"]["message"]["content"][0]["text"] == answer.text
    assert app.largest_frame < 1024 * 1024
    assert app.failures == []


@pytest_twisted.ensureDeferred
async def test_a_native_tool_call_reaches_the_phone_after_it_reconnects(app, fake_llm):
    fake_llm.script(Reply(ToolCall("get_location", {})), Text("You are at home."))
    await app.connect(native_tools=[LOCATION])
    session_id = await app.create_chat()
    await app.client.drop()

    hello = await app.connect()  # resume, without nativeTools
    assert hello["resumed"] == {session_id: "live"}
    await app.prompt("where am I?")
    request = await app.wait_for("native_tool_request", session_id)
    assert request["payload"]["toolName"] == "get_location"
    await app.call(
        "native_tool_response",
        {"callId": request["payload"]["callId"], "result": {"place": "home"}},
    )
    await app.wait_for("agent_settled", session_id)
    assert app.text(session_id) == "You are at home."
    assert app.failures == []


@pytest_twisted.ensureDeferred
async def test_only_sessions_the_connection_was_attached_to_are_resumed(app):
    await app.connect()
    first = await app.create_chat()
    second = await app.create_chat()  # attaching here detached the app from first
    app.last_seq_by_session.setdefault(first, 0)
    app.last_seq_by_session.setdefault(second, 0)
    await app.client.drop()
    hello = await app.connect()
    assert hello["resumed"] == {first: "not_attached", second: "live"}


@pytest_twisted.ensureDeferred
async def test_a_killed_agent_ends_the_run_with_an_error_the_app_shows(app, pi_server, fake_llm):
    fake_llm.script(Tokens(2000, delay=0.01))
    await app.connect()
    session_id = await app.create_chat()
    await app.prompt("go on")
    await app.client.wait_for_event(
        lambda f: f["type"] == "message_update" and f["sessionId"] == session_id
    )
    os.kill(pi_server.sessions.sessions[session_id].agent.pid, signal.SIGKILL)
    end = await app.wait_for("agent_end", session_id)
    assert end["payload"]["success"] is False
    assert end["payload"]["error"]["code"] == "agent_exited"
    assert "signal 9" in end["payload"]["error"]["message"]
    assert app.failures == []


@pytest_twisted.ensureDeferred
async def test_tool_output_and_status_and_the_tool_call_partial(
    app, pi_server, fake_llm, tmp_path, agent_dir
):
    repo = make_repository(str(tmp_path / "repo"), files={"hello.txt": "hi there\n"})
    (agent_dir.path / "repos.json").write_text(
        json.dumps({"repos": [{"id": "r", "name": "r", "path": repo}]})
    )
    fake_llm.script(Reply(ToolCall("bash", {"command": "cat hello.txt"})), Text("Read it."))
    await app.connect()
    result = await app.call(
        "session.create", {"mode": "code", "repoId": "r", "systemPrompt": "Be brief."}
    )
    session_id = app.current = result["sessionId"]
    await app.prompt("read the file")
    await app.wait_for("agent_settled", session_id)
    [end] = app.events(session_id, "tool_execution_end")
    assert end["payload"]["output"] == "hi there\n"
    assert end["payload"]["status"] == "success"
    starts = [
        f
        for f in app.events(session_id, "message_update")
        if f["payload"]["assistantMessageEvent"]["type"] == "toolcall_start"
    ]
    update = starts[0]["payload"]["assistantMessageEvent"]
    assert update["partial"]["content"][update["contentIndex"]]["name"] == "bash"
    assert app.failures == []


@pytest_twisted.ensureDeferred
async def test_hello_models_and_messages_decode_as_the_app_decodes_them(app, fake_llm):
    fake_llm.script(Text("an answer"))
    hello = await app.connect()
    assert type(hello["capabilities"]["replayWindowSec"]) is int
    session_id = await app.create_chat()
    await app.prompt("a question")
    await app.wait_for("agent_settled", session_id)
    # pi's own bash command adds a message of a role the app does not know.
    await app.call("bash", {"type": "bash", "command": "echo ran"})
    messages = await app.messages()
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "echo ran" in messages[2]["content"][0]["text"]
    decode_messages({"messages": messages})
    # The app's current session may be gone; the models are the same.
    await app.delete(session_id)
    models = await app.call("get_available_models", {"type": "get_available_models"})
    assert {m["id"] for m in models["models"]} >= {"fake-1"}
    with pytest.raises(AppError) as gone:
        await app.prompt("hello?")
    assert gone.value.code == "not_found"
