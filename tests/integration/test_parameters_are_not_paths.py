"""
Parameters that reach pi's command line are never read by pi as paths: a token
holder cannot make the agent send a file of the server's to the model.
"""

import pytest
import pytest_twisted

from tests.support.wsclient import CallFailed

SECRET = "the-content-of-a-file-only-the-server-may-read"


def system_text(request) -> str:
    return "\n".join(
        m["content"] if isinstance(m["content"], str) else str(m["content"])
        for m in request["messages"]
        if m["role"] == "system"
    )


@pytest_twisted.ensureDeferred
async def test_a_system_prompt_naming_a_file_is_sent_as_text(pi_server, fake_llm, tmp_path):
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    client = await pi_server.client()
    for system_prompt in (str(secret_file), "/proc/self/environ"):
        session_id = (
            await client.call("session.create", {"mode": "chat", "systemPrompt": system_prompt})
        )["sessionId"]
        next_request = fake_llm.wait_for_request(len(fake_llm.requests) + 1)
        await client.call("prompt", {"message": "hi"}, session_id=session_id)
        sent = system_text(await next_request)
        assert system_prompt in sent
        assert SECRET not in sent and "PI_CODING_AGENT_DIR" not in sent


@pytest_twisted.ensureDeferred
async def test_a_system_prompt_with_nul_is_refused(pi_server):
    client = await pi_server.client()
    for bad in ("text\x00more", "lone \ud800 surrogate"):
        with pytest.raises(CallFailed) as refused:
            await client.call("session.create", {"mode": "chat", "systemPrompt": bad})
        assert refused.value.code == "invalid_params"
    assert pi_server.sessions.sessions == {}
