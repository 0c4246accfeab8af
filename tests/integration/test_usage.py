"""
Usage and budgets with the real pi and the scripted LLM (which reports usage in its final
chunk, as OpenAI-compatible providers do), over a models.json with prices for two models;
pi-server as a process of its own, restarted and killed with SIGKILL.
"""

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.fakellm import Hang, Reply, Text, Tokens
from tests.support.metrics import moved, scrape
from tests.support.piagent import FAKE_MODELS, FAKE_PRICES, FAKE_PROVIDER, price_models
from tests.support.serverprocess import ServerProcess
from tests.support.wsclient import CallFailed, RpcClient, is_type

TOKEN = "usage-test-token"
HELLO = {"client": {"name": "tests", "version": "1"}}
PRICES = FAKE_PRICES


def expected(reported) -> dict:
    """What the server should count for these ``(model, usage)`` the LLM reported."""
    total = {"input": 0, "output": 0, "costUsd": 0.0}
    for model, usage in reported:
        price = PRICES[model]
        total["input"] += usage["prompt_tokens"]
        total["output"] += usage["completion_tokens"]
        total["costUsd"] += (
            usage["prompt_tokens"] * price["input"] + usage["completion_tokens"] * price["output"]
        ) / 1e6
    return total


def matches(usage: dict, want: dict) -> bool:
    return (
        usage["input"] == want["input"]
        and usage["output"] == want["output"]
        and usage["totalTokens"] == want["input"] + want["output"]
        and usage["costUsd"] == pytest.approx(want["costUsd"], abs=2e-6)
    )


async def connect(server, token=TOKEN):
    client = await RpcClient.connect(reactor, server.port, token=token)
    await client.call("hello", HELLO)
    return client


def last_seq(client, session_id) -> int:
    return max((f["seq"] for f in client.event_frames(session_id)), default=0)


async def run(client, session_id, message, **params):
    """Prompt and wait for the run's ``agent_settled``."""
    after = last_seq(client, session_id)
    await client.call("prompt", {"message": message, **params}, session_id=session_id)
    return await client.wait_for_event(
        lambda f: f["type"] == "agent_settled" and f["sessionId"] == session_id and f["seq"] > after
    )


async def listed(client) -> tuple[dict, dict]:
    result = await client.call("session.list")
    return {s["sessionId"]: s for s in result["sessions"]}, result["today"]


async def totals(client) -> tuple[dict, dict]:
    """Each session's usage and budget, and today's."""
    sessions, today = await listed(client)
    return {i: (s["usage"], s["budgetUsd"]) for i, s in sessions.items()}, today


@pytest.fixture
def server_process(agent_dir, pi_binary, tmp_path):
    price_models(agent_dir)
    server = ServerProcess.with_real_pi(tmp_path, agent_dir, pi_binary, "--auth-token", TOKEN)
    yield server
    server.stop()
    server.kill_agents()


@pytest_twisted.ensureDeferred
async def test_usage_budgets_metrics_and_reports_across_restart_and_kill(server_process, fake_llm):
    server_process.start()
    phone_token = server_process.token_add("phone")
    phone = await connect(server_process, phone_token)
    desk = await connect(server_process)

    # Session A, from the phone, on both models; session B, with the server token, on one.
    a = (await phone.call("session.create", {"mode": "chat"}))["sessionId"]
    fake_llm.script(Text("one two three"), Tokens(30), Text("four"))
    await run(phone, a, "first")
    await phone.call(
        "set_model", {"provider": FAKE_PROVIDER, "modelId": FAKE_MODELS[1]}, session_id=a
    )
    await run(phone, a, "second")
    reported_a = [(m, u) for m, u in fake_llm.reported_usage()]
    assert {m for m, _ in reported_a} == set(FAKE_MODELS)

    b = (await desk.call("session.create", {"mode": "chat"}))["sessionId"]
    before = await scrape(server_process)
    await run(desk, b, "third")
    after = await scrape(server_process)
    reported_b = fake_llm.reported_usage()[len(reported_a) :]
    assert len(reported_b) == 1

    sessions, today = await listed(desk)
    assert matches(sessions[a]["usage"], expected(reported_a))
    assert matches(sessions[b]["usage"], expected(reported_b))
    assert matches(today["usage"], expected(reported_a + reported_b))
    assert today["limitUsd"] is None

    # /metrics moved by B's run, for its model.
    want_b = expected(reported_b)
    model_1 = f"{FAKE_PROVIDER}/{FAKE_MODELS[0]}"
    model_2 = f"{FAKE_PROVIDER}/{FAKE_MODELS[1]}"
    assert (
        moved(before, after, "pi_server_tokens_total", model=model_1, kind="input")
        == (want_b["input"])
    )
    assert (
        moved(before, after, "pi_server_tokens_total", model=model_1, kind="output")
        == (want_b["output"])
    )
    assert moved(before, after, "pi_server_cost_usd_total", model=model_1) == pytest.approx(
        want_b["costUsd"]
    )
    assert moved(before, after, "pi_server_tokens_total", model=model_2, kind="input") == 0

    # usage.report by model and by device.
    by_model = {
        r["key"]: r["usage"] for r in (await desk.call("usage.report", {"by": "model"}))["rows"]
    }
    everything = reported_a + reported_b
    for model, key in ((FAKE_MODELS[0], model_1), (FAKE_MODELS[1], model_2)):
        assert matches(by_model[key], expected([r for r in everything if r[0] == model]))
    by_device = {
        r["key"]: r["usage"] for r in (await desk.call("usage.report", {"by": "device"}))["rows"]
    }
    assert sorted(by_device) == ["(server)", "phone"]
    assert matches(by_device["phone"], expected(reported_a))
    assert matches(by_device["(server)"], expected(reported_b))
    day = today["day"]
    by_day = (await desk.call("usage.report", {"by": "day", "from": day, "to": day}))["rows"]
    assert [r["key"] for r in by_day] == [day]
    assert by_day[0]["usage"] == today["usage"]

    # Session C's budget is crossed by the first message of a run that has a follow-up
    # queued: the run is stopped there, the next prompt refused; B goes on.
    c = (await phone.call("session.create", {"mode": "chat", "budgetUsd": 0.0001}))["sessionId"]
    requests_before = len(fake_llm.requests)
    fake_llm.script(Tokens(40, delay=0.02), Reply(Text("never"), Hang()))
    await phone.call("prompt", {"message": "spend"}, session_id=c)
    await phone.wait_for_event(lambda f: f["type"] == "message_update" and f["sessionId"] == c)
    await phone.call("follow_up", {"message": "and more"}, session_id=c)
    reached = await phone.wait_for_event(
        lambda f: f["type"] == "budget_reached" and f["sessionId"] == c
    )
    assert reached["payload"]["scope"] == "session"
    assert reached["payload"]["limitUsd"] == 0.0001
    assert reached["payload"]["spentUsd"] > 0.0001
    assert reached["payload"]["resetsAt"] is None
    settled = await phone.wait_for_event(
        lambda f: f["type"] == "agent_settled" and f["sessionId"] == c
    )
    assert settled["payload"]["aborted"] is True
    assistant_ends = [
        f
        for f in phone.event_frames(c)
        if f["type"] == "message_end" and f["payload"]["message"]["role"] == "assistant"
    ]
    # The message that crossed the budget, and at most the one under way when it was seen
    # (the follow-up's, which the scripted LLM never finishes: the abort ended it).
    assert 1 <= len(assistant_ends) <= 2
    assert len(fake_llm.requests) - requests_before <= 2
    fake_llm.drop_unused()
    with pytest.raises(CallFailed) as refused:
        await phone.call("prompt", {"message": "again"}, session_id=c)
    assert refused.value.code == "budget_exceeded"
    with pytest.raises(CallFailed) as refused:
        await phone.call("steer", {"message": "again"}, session_id=c)
    assert refused.value.code == "budget_exceeded"
    await run(desk, b, "B goes on")

    sessions, today = await listed(desk)
    assert sessions[c]["budgetUsd"] == 0.0001
    total = sum(s["usage"]["costUsd"] for s in sessions.values())
    assert today["usage"]["costUsd"] == pytest.approx(total, abs=1e-5)
    report = await desk.call("usage.report", {"by": "session"})
    kept = await totals(desk)

    # A restart, then a kill -9: the totals and C's budget are as they were.
    await phone.disconnect()
    await desk.disconnect()
    server_process.stop()
    server_process.start()
    desk = await connect(server_process)
    assert await totals(desk) == kept
    server_process.kill()
    await desk.closed
    server_process.kill_agents()
    server_process.start()
    desk = await connect(server_process)
    assert await totals(desk) == kept
    assert await desk.call("usage.report", {"by": "session"}) == report
    with pytest.raises(CallFailed) as refused:
        await desk.call("prompt", {"message": "again"}, session_id=c)
    assert refused.value.code == "budget_exceeded"

    # A higher limit lets C work again.
    raised = await desk.call("session.set_budget", {"sessionId": c, "budgetUsd": 100})
    assert raised["budgetUsd"] == 100
    await desk.call("session.attach", {"sessionId": c})
    await run(desk, c, "now it may")
    await desk.disconnect()


@pytest_twisted.ensureDeferred
async def test_the_daily_budget_stops_every_session(make_pi_server, agent_dir, fake_llm):
    price_models(agent_dir)
    server = make_pi_server("--daily-budget", "0.01")
    client = await server.client()
    a = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    b = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    await client.call("session.attach", {"sessionId": a, "exclusive": False})

    # A streams a long answer; B's short one spends the day's budget: both runs stop.
    fake_llm.script(Tokens(500, delay=0.02), Text("short and expensive"))
    await client.call("prompt", {"message": "long"}, session_id=a)
    await client.wait_for_event(lambda f: f["type"] == "message_update" and f["sessionId"] == a)
    await client.call("prompt", {"message": "short"}, session_id=b)
    for session_id in (a, b):
        reached = await client.wait_for_event(
            lambda f, sid=session_id: f["type"] == "budget_reached" and f["sessionId"] == sid
        )
        assert reached["payload"]["scope"] == "day"
        assert reached["payload"]["limitUsd"] == 0.01
        assert reached["payload"]["resetsAt"].endswith("T00:00:00Z")
    settled_a = await client.wait_for_event(is_type("agent_settled", a))
    assert settled_a["payload"]["aborted"] is True
    await client.wait_for_event(is_type("agent_settled", b))
    for session_id in (a, b):
        with pytest.raises(CallFailed) as refused:
            await client.call("prompt", {"message": "more"}, session_id=session_id)
        assert refused.value.code == "budget_exceeded"
    today = (await client.call("session.list"))["today"]
    assert today["limitUsd"] == 0.01 and today["usage"]["costUsd"] > 0.01
    fake_llm.drop_unused()
