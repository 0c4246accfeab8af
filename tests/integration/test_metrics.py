"""GET /metrics scraped around a real run, --metrics-token, and GET /ready."""

import pytest_twisted
import treq

from tests.support.fakellm import Tokens
from tests.support.metrics import moved, scrape
from tests.support.wsclient import CallFailed

METRICS_TOKEN = "metrics-test-token-value"


@pytest_twisted.ensureDeferred
async def test_counters_move_across_a_run(pi_server, fake_llm):
    client = await pi_server.client()
    session_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    before = await scrape(pi_server)

    fake_llm.script(Tokens(200))
    await client.call("prompt", {"message": "count please"}, session_id=session_id)
    await client.wait_for_event(
        lambda f: f["type"] == "agent_settled" and f["sessionId"] == session_id
    )
    try:
        await client.call("session.attach", {"sessionId": "no-such-session"})
    except CallFailed as e:
        assert e.code == "not_found"
    after = await scrape(pi_server)

    assert moved(before, after, "pi_server_runs_started_total") == 1
    assert moved(before, after, "pi_server_runs_ended_total", outcome="ok") == 1
    # The one client is the only one attached: every event it got, one frame each.
    events = moved(before, after, "pi_server_events_sent_total", mode="full")
    assert events == len(client.event_frames(session_id)) > 200
    assert moved(before, after, "pi_server_event_bytes_sent_total", mode="full") > 200 * 10
    assert moved(before, after, "pi_server_request_duration_seconds_count", method="prompt") == 1
    assert moved(before, after, "pi_server_errors_total", code="not_found") == 1
    assert after[("pi_server_connections", ())] == 1
    assert after[("pi_server_sessions", (("state", "idle"),))] == 1
    assert after[("pi_server_agents", (("state", "warm"),))] == 1
    assert after[("pi_server_agents", (("state", "running"),))] == 0
    assert after[("pi_server_journal_bytes", ())] > before[("pi_server_journal_bytes", ())]


@pytest_twisted.ensureDeferred
async def test_metrics_token(make_pi_server):
    server = make_pi_server("--metrics-token", METRICS_TOKEN)
    url = f"http://127.0.0.1:{server.port}/metrics"
    assert (await treq.get(url)).code == 401
    assert (await treq.get(url, headers={"Authorization": "Bearer wrong"})).code == 401
    samples = await scrape(server, token=METRICS_TOKEN)
    assert ("pi_server_connections", ()) in samples


@pytest_twisted.ensureDeferred
async def test_ready(pi_server):
    response = await treq.get(f"http://127.0.0.1:{pi_server.port}/ready")
    assert response.code == 200
    assert await response.json() == {"ok": True, "checks": {"agentCommand": True, "dataDir": True}}
