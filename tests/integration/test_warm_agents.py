"""
Warm agents and idle agents with the real pi: a create is handed an agent that was
started ahead (the iOS app's create, with its system prompt, as well as one with a
model), and sessions left idle hold no pi process yet resume with their history.
"""

import pytest_twisted
from twisted.internet import reactor

from tests.support.fakellm import Text
from tests.support.seedclient import SeedApp, decode_messages
from tests.support.server import TOKEN
from tests.support.wsclient import is_type


def system_text(request) -> str:
    return "\n".join(
        str(m.get("content")) for m in request["messages"] if m["role"] in ("system", "developer")
    )


def live_agents(server) -> list:
    """The agents of the server's sessions and of its warm pool that have not ended."""
    warm = server.sessions.agents.warm
    held = [*server.sessions.sessions.values(), *(warm.sessions() if warm else [])]
    return [s.agent for s in held if s.agent is not None and s.agent.exit is None]


async def warm_agent(server):
    """The pool's agent once it runs (the pool fills at start and when a client comes)."""
    (session,) = server.sessions.agents.warm.sessions()
    return session, await session.lifecycle.want()


@pytest_twisted.ensureDeferred
async def test_the_ios_create_is_handed_the_warm_agent_with_its_system_prompt(pi_server, fake_llm):
    app = SeedApp(reactor, pi_server.port, TOKEN)
    await app.connect()
    warm, agent = await warm_agent(pi_server)
    session_id = await app.create_chat(system_prompt="Answer like a pirate.")
    assert session_id == warm.id
    session = pi_server.sessions.sessions[session_id]
    assert session.agent is agent and agent.exit is None  # no other pi was started for it
    fake_llm.script(Text("Arr."))
    await app.prompt("hello")
    request = await fake_llm.wait_for_request(1)
    assert "Answer like a pirate." in system_text(request)
    await app.wait_for("agent_settled", session_id)
    assert "Arr." in app.text(session_id)
    texts = [m for m in decode_messages(await app.call("get_messages")) if m["role"] != "system"]
    assert [m["role"] for m in texts] == ["user", "assistant"]
    assert app.failures == []


@pytest_twisted.ensureDeferred
async def test_a_create_with_a_model_sets_it_on_the_warm_agent_and_keeps_it(pi_server, fake_llm):
    client = await pi_server.client()
    warm, agent = await warm_agent(pi_server)
    created = await client.call(
        "session.create", {"mode": "chat", "provider": "fake", "modelId": "fake-2"}
    )
    session_id = created["sessionId"]
    assert session_id == warm.id
    state = await client.call("get_state", session_id=session_id)
    assert state["model"]["id"] == "fake-2"
    # A restart (idle stop, crash) starts pi on the session's model.
    await pi_server.sessions.sessions[session_id].lifecycle.stop()
    state = await client.call("get_state", session_id=session_id)
    assert state["model"]["id"] == "fake-2"
    assert pi_server.sessions.sessions[session_id].agent is not agent


@pytest_twisted.ensureDeferred
async def test_idle_sessions_hold_no_pi_and_resume_with_their_history(make_pi_server, fake_llm):
    server = make_pi_server("--agent-idle-timeout", "0.5")
    client = await server.client()
    session_ids = []
    for number in range(3):
        created = await client.call("session.create", {"mode": "chat"})
        session_ids.append(created["sessionId"])
        fake_llm.script(Text(f"answer {number}"))
        await client.call("prompt", {"message": f"question {number}"}, session_id=session_ids[-1])
        await client.wait_for_event(is_type("agent_settled", session_ids[-1]))
    await client.disconnect()
    stopped = []
    # Until the idle sweep has stopped every agent: the sessions' and the warm ones (the
    # pool may still be refilling after the last create).
    while live := live_agents(server):
        stopped.append(await live[0].exited)
    # (An earlier session's agent may have gone already: creating the next one detached
    # the client from it.)
    assert all(exit.stop_requested for exit in stopped)  # stopped, not crashed
    client = await server.client()
    listed = (await client.call("session.list"))["sessions"]
    assert {s["sessionId"]: s["status"] for s in listed} == dict.fromkeys(session_ids, "stopped")

    fake_llm.script(Text("still here"))
    await client.call("session.attach", {"sessionId": session_ids[0]})
    await client.call("prompt", {"message": "and now?"}, session_id=session_ids[0])
    await client.wait_for_event(is_type("agent_settled", session_ids[0]))
    messages = (await client.call("get_messages", session_id=session_ids[0]))["messages"]
    said = [m for m in messages if m["role"] == "user"]
    assert [m["content"][0]["text"] for m in said] == ["question 0", "and now?"]
