"""What twistd's log says (--log-level, --log-format, --no-health-log): a few lines for a
long answer, not one per frame; JSON lines in the foreground and in daemon mode."""

import json
import subprocess

import pytest_twisted
from twisted.internet import reactor

from tests.support.fakellm import Tokens
from tests.support.piagent import VERSION_ONLY_PI
from tests.support.twistdprocess import TWISTD, TwistdServer, run_daemon
from tests.support.wsclient import RpcClient

TOKEN = "logging-test-token-value"
DOTENV_SECRET = "sk-logging-test-dotenv-secret"


async def stream_answer(server: TwistdServer, fake_llm, tokens: int) -> str:
    answer = Tokens(tokens)
    fake_llm.script(answer)
    client = await RpcClient.connect(reactor, server.port, token=TOKEN)
    await client.call("hello", {"client": {"name": "tests", "version": "1"}})
    session_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    await client.call("prompt", {"message": "a long answer please"}, session_id=session_id)
    await client.wait_for_event(
        lambda f: f["type"] == "agent_settled" and f["sessionId"] == session_id
    )
    await client.disconnect()
    return session_id


async def run_server(agent_dir, pi_binary, fake_llm, *extra_args) -> TwistdServer:
    dotenv = agent_dir.path / ".env"
    dotenv.write_text(f"OPENAI_API_KEY={DOTENV_SECRET}\n")
    dotenv.chmod(0o600)
    server = TwistdServer(reactor, agent_dir, pi_binary, TOKEN, extra_args)
    try:
        await server.wait_started()
        session_id = await stream_answer(server, fake_llm, 2000)
    finally:
        await server.stop()
    server.session_id = session_id
    return server


def answer_lines(lines: list[str]) -> list[str]:
    """The lines from the server's start to its stop: those of the answer."""
    begin = next(i for i, line in enumerate(lines) if "listening on" in line)
    end = next(i for i, line in enumerate(lines) if "Received SIGTERM" in line)
    return lines[begin:end]


def assert_no_secret(output: bytes):
    for secret in (TOKEN, DOTENV_SECRET):
        assert secret.encode() not in output


@pytest_twisted.ensureDeferred
async def test_a_2000_token_answer_logs_a_few_lines(agent_dir, pi_binary, fake_llm):
    server = await run_server(agent_dir, pi_binary, fake_llm)
    lines = server.lines
    assert len(answer_lines(lines)) < 20, "\n".join(lines)
    # What matters is still there: start-up, the connection, the session.
    text = "\n".join(lines)
    assert f"listening on 127.0.0.1:{server.port}" in text
    assert f"session {server.session_id} created" in text
    assert "connection " in text and " opened from " in text
    assert_no_secret(server.stdout)


@pytest_twisted.ensureDeferred
async def test_debug_level_shows_the_frames(agent_dir, pi_binary, fake_llm):
    server = await run_server(agent_dir, pi_binary, fake_llm, "--log-level", "debug")
    # Autobahn's per-frame lines: the default level keeps them out.
    assert len(server.lines) > 1000
    assert_no_secret(server.stdout)


@pytest_twisted.ensureDeferred
async def test_json_lines_carry_the_event_fields(agent_dir, pi_binary, fake_llm):
    server = await run_server(agent_dir, pi_binary, fake_llm, "--log-format", "json")
    records = [json.loads(line) for line in server.lines]
    assert len(answer_lines(server.lines)) < 20
    for record in records:
        assert {"log_time", "log_level", "log_namespace", "text", "level"} <= set(record)
    created = [
        r
        for r in records
        if r.get("session_id") == server.session_id
        and r["log_format"].startswith("session {session_id} created")
    ]
    assert len(created) == 1
    assert created[0]["mode"] == "chat" and created[0]["level"] == "info"
    assert created[0]["text"].startswith(f"session {server.session_id} created (chat)")
    listening = [r for r in records if r.get("port") == server.port]
    assert listening and listening[0]["host"] == "127.0.0.1"
    assert_no_secret(server.stdout)


def test_daemon_logs_json_lines_to_its_logfile(tmp_path):
    port, log = run_daemon(tmp_path, TOKEN, "--log-format", "json", "--no-health-log")
    records = [json.loads(line) for line in log.splitlines()]
    assert any(r.get("port") == port and r["text"].startswith("listening on") for r in records)
    assert records[-1]["text"] == "Server Shut Down."
    # --no-health-log: the probes are not in the access log.
    assert not any("/health" in r["text"] for r in records)
    assert TOKEN not in log


def test_a_daemon_cannot_log_to_standard_output(tmp_path):
    result = subprocess.run(
        [
            TWISTD,
            "--pidfile",
            str(tmp_path / "pid"),
            "--logfile",
            "-",
            "piserver",
            "--data-dir",
            str(tmp_path / "data"),
            "--pi",
            VERSION_ONLY_PI,
        ],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "cannot log to standard output" in (result.stdout + result.stderr).decode()
