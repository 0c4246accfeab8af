"""The real pi agent (``pi --mode rpc``) against the scripted LLM on loopback."""

import json

import pytest
import pytest_twisted

from tests.support.fakellm import Reply, Text, ToolCall
from tests.support.piagent import INSTALL_HINT, PiNotInstalled, locate_pi


@pytest_twisted.inlineCallbacks
def test_prompt_streams_the_scripted_text_back(spawn_pi_rpc, fake_llm):
    fake_llm.script(Text("Hello from the fake model"))
    pi = spawn_pi_rpc("--no-session")

    response = yield pi.send({"type": "prompt", "message": "say hello"})
    yield pi.wait_for_event("agent_settled")
    agent_end = pi.events_of("agent_end")[0]

    assert response["success"] is True
    assert pi.text_deltas() == ["Hello ", "from ", "the ", "fake ", "model"]
    answer = agent_end["messages"][-1]
    assert answer["role"] == "assistant"
    assert answer["stopReason"] == "stop"
    assert answer["content"] == [{"type": "text", "text": "Hello from the fake model"}]
    request = fake_llm.requests[0]
    assert request["model"] == "fake-1"
    assert request["stream"] is True
    assert request["messages"][-1]["content"] == [{"type": "text", "text": "say hello"}]
    assert pi.non_json == []


@pytest_twisted.inlineCallbacks
def test_a_tool_call_runs_the_real_tool(spawn_pi_rpc, fake_llm, agent_dir):
    (agent_dir.project / "notes.txt").write_text("forty-two\n")
    fake_llm.script(Reply(ToolCall("read", {"path": "notes.txt"})), Text("It says forty-two."))
    pi = spawn_pi_rpc("--no-session")

    yield pi.send({"type": "prompt", "message": "what is in notes.txt?"})
    yield pi.wait_for_event("agent_settled")

    (tool_end,) = pi.events_of("tool_execution_end")
    assert tool_end["toolName"] == "read"
    assert tool_end["isError"] is False
    assert tool_end["result"]["content"] == [{"type": "text", "text": "forty-two\n"}]
    tool_message = fake_llm.requests[1]["messages"][-1]
    assert tool_message == {"role": "tool", "content": "forty-two\n", "tool_call_id": "call_1_0"}


@pytest_twisted.inlineCallbacks
def test_closing_stdin_ends_pi_cleanly(spawn_pi_rpc):
    pi = spawn_pi_rpc("--no-session")
    state = yield pi.send({"type": "get_state"})

    reason = yield pi.stop()

    assert state["data"]["model"]["id"] == "fake-1"
    assert reason.exitCode == 0


def test_agent_dir_configures_the_fake_provider(agent_dir, fake_llm):
    models = json.loads(agent_dir.models_path.read_text())
    settings = json.loads(agent_dir.settings_path.read_text())
    provider = models["providers"]["fake"]

    assert provider["baseUrl"] == fake_llm.base_url
    assert provider["api"] == "openai-completions"
    assert [model["id"] for model in provider["models"]] == ["fake-1", "fake-2"]
    assert (settings["defaultProvider"], settings["defaultModel"]) == ("fake", "fake-1")
    environment = agent_dir.environment()
    assert environment["PI_CODING_AGENT_DIR"] == str(agent_dir.path)
    assert environment["HOME"] == str(agent_dir.home)
    assert environment["PI_OFFLINE"] == "1"


def test_a_missing_pi_names_the_install_script(tmp_path):
    with pytest.raises(PiNotInstalled) as missing:
        locate_pi({"PI_SERVER_PROJECT_DIR": str(tmp_path)})

    assert "scripts/install-pi" in str(missing.value)
    assert INSTALL_HINT in str(missing.value)


def test_pi_server_pi_overrides_the_location(tmp_path):
    fake_pi = tmp_path / "my-pi"
    fake_pi.write_text("#!/bin/sh\n")
    fake_pi.chmod(0o755)

    assert locate_pi({"PI_SERVER_PI": str(fake_pi)}) == (str(fake_pi),)
