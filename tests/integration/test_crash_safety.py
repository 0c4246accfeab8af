"""
Data safety: the server process is killed with SIGKILL in the middle of answers,
again and again; each restart lists every session with its history and replays
its journal.
"""

import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.fakellm import Text, Tokens
from tests.support.serverprocess import ServerProcess
from tests.support.wsclient import RpcClient, is_type

TOKEN = "crash-test-token"
HELLO = {"client": {"name": "tests", "version": "1"}}


@pytest.fixture
def server_process(agent_dir, pi_binary, tmp_path):
    server = ServerProcess.with_real_pi(tmp_path, agent_dir, pi_binary, "--auth-token", TOKEN)
    yield server
    server.stop()


async def connect(server):
    client = await RpcClient.connect(reactor, server.port, token=TOKEN)
    await client.call("hello", HELLO)
    return client


@pytest_twisted.ensureDeferred
async def test_repeated_kill_9_mid_answer_loses_no_session(server_process, fake_llm):
    completed = {}
    for round_number in range(3):
        server_process.start()
        client = await connect(server_process)
        listed = {s["sessionId"] for s in (await client.call("session.list"))["sessions"]}
        assert listed == set(completed)
        for session_id, texts in completed.items():
            messages = (await client.call("get_messages", session_id=session_id))["messages"]
            assistant = "".join(
                part.get("text", "")
                for m in messages
                if m["role"] == "assistant"
                for part in m["content"]
                if isinstance(part, dict)
            )
            for text in texts:
                assert text in assistant
            attached = await client.call("session.attach", {"sessionId": session_id, "lastSeq": 0})
            assert attached["catchUp"] == "replayed"
            numbers = [f["seq"] for f in client.event_frames(session_id)]
            assert numbers == list(range(1, attached["lastSeq"] + 1))

        # A finished answer in a new session, then a long one cut by SIGKILL.
        finished = f"answer number {round_number}"
        fake_llm.script(Text(finished), Tokens(400, delay=0.01))
        session_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
        await client.call("prompt", {"message": "short"}, session_id=session_id)
        short_end = await client.wait_for_event(is_type("agent_settled", session_id))
        completed[session_id] = [finished]
        await client.call("prompt", {"message": "long"}, session_id=session_id)
        # The long answer is streaming (not just the short one's deltas seen before).
        await client.wait_for_event(
            lambda f, sid=session_id, after=short_end["seq"]: (
                f["type"] == "message_update"
                and f["sessionId"] == sid
                and f["seq"] > after
                and f["payload"]["assistantMessageEvent"]["type"] == "text_delta"
            )
        )
        server_process.kill()
        # As its agents die with it when a machine stops (they would go on writing the
        # session files the next server's agents use).
        server_process.kill_agents()
        await client.closed

    log = server_process.log()
    assert "corrupt" not in log.lower()
    assert TOKEN not in log
    assert os.path.exists(server_process.data_dir / "state.json")
