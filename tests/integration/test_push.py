"""Web Push against a push-service stand-in on loopback https (tests/support/pushservice.py),
with the real pi agent: the VAPID JWT verifies against GET /push/key and the payload
decrypts with the subscription's keys; a session on screen is not pushed; 410 removes a
subscription; a push service that never answers delays no run; internal endpoints are
refused unless allowed; a revoked device token's subscriptions are gone."""

import json
import time

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList

from piserver.security.pushsubscriptions import PUSH_SUBSCRIPTIONS_FILE
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore
from tests.support.fakellm import Text
from tests.support.pushservice import PushService
from tests.support.wsclient import CallFailed, RpcClient, is_type

REFUSED = [
    "http://push.example.com/send/1",
    "https://127.0.0.1/push/x",
    "https://10.0.0.1/push/x",
    "https://[::1]/push/x",
    "https://localhost/push/x",
    "https://169.254.169.254/latest",
]


@pytest_twisted.async_yield_fixture
async def push_service(tmp_path):
    service = PushService(tmp_path / "push-service").start()
    yield service
    await service.stop()


async def settled_after(client, session_id, message):
    first = client.event_frames(session_id)
    last_seq = first[-1]["seq"] if first else 0
    await client.call("prompt", {"message": message}, session_id=session_id)
    return await client.wait_for_event(
        lambda f: is_type("agent_settled", session_id)(f) and f["seq"] > last_seq
    )


async def pushes_done(server):
    notifier = server.service.getServiceNamed("push")
    await DeferredList(list(notifier.sent))


@pytest_twisted.ensureDeferred
async def test_pushes_reach_a_push_service_only_when_they_should(
    make_pi_server, fake_llm, push_service
):
    server = make_pi_server(
        "--push-allow-endpoint",
        push_service.origin + "/push/",
        "--push-ca-file",
        str(push_service.cert_path),
    )
    response = await treq.get(f"http://127.0.0.1:{server.port}/push/key")
    key = json.loads(await response.content())["publicKey"]
    push_service.server_key = key
    assert len(key) == 87 and "=" not in key  # 65 bytes, URL-safe base64 unpadded
    key_file = server.agent_dir.path / "vapid-private-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600

    phone = await server.client()
    # Internal or plain-http endpoints are refused, with a reason.
    for endpoint in REFUSED:
        refused = push_service.subscription("refused")
        try:
            await phone.call("push.subscribe", {"subscription": {**refused, "endpoint": endpoint}})
        except CallFailed as e:
            assert e.code == "invalid_params"
            assert "https" in e.message or "--push-allow-endpoint" in e.message, e.message
        else:
            raise AssertionError(f"{endpoint} was accepted")
    await phone.call("push.subscribe", {"subscription": push_service.subscription("a")})
    listed = (await phone.call("push.list"))["subscriptions"]
    assert [s["endpoint"] for s in listed] == [push_service.origin + "/push/a"]
    assert "keys" not in listed[0]

    # On screen: no push. Hidden: a push with the answer's first line.
    session_id = (await phone.call("session.create", {"mode": "chat"}))["sessionId"]
    await phone.call("session.attach", {"sessionId": session_id})
    await phone.call("session.viewing", {"sessionId": session_id, "visible": True})
    fake_llm.script(Text("Seen on screen."), Text("First line.\n\nMore text."))
    await settled_after(phone, session_id, "look")
    await pushes_done(server)
    await phone.call("session.viewing", {"sessionId": session_id, "visible": False})
    await settled_after(phone, session_id, "away")
    push = await push_service.wait_for(lambda p: p.message["event"] == "run_finished")
    await pushes_done(server)
    assert push_service.problems == []
    assert [p.message["body"] for p in push_service.received] == ["First line."]
    assert push.message["sessionId"] == session_id
    assert push.message["url"] == f"/ui/sessions/{session_id}"
    assert push.message["title"] == "look: finished"
    assert (push.ttl, push.urgency) == ("86400", "normal")

    # 410: that subscription is removed; another one still gets pushes.
    await phone.call("push.subscribe", {"subscription": push_service.subscription("b")})
    push_service.answer("a", 410)
    fake_llm.script(Text("Third."))
    await settled_after(phone, session_id, "third")
    await push_service.wait_for(lambda p: p.endpoint_id == "b" and p.message["body"] == "Third.")
    await pushes_done(server)
    listed = (await phone.call("push.list"))["subscriptions"]
    assert [s["endpoint"] for s in listed] == [push_service.origin + "/push/b"]

    # A push service that never answers delays no run.
    push_service.answer("b", None)
    fake_llm.script(Text("Fourth."), Text("Fifth."))
    started = time.monotonic()
    await settled_after(phone, session_id, "fourth")
    await push_service.wait_for(lambda p: p.message["body"] == "Fourth.")
    await settled_after(phone, session_id, "fifth")
    assert time.monotonic() - started < 8, "a run waited for the push service"
    assert server.service.getServiceNamed("push").sent, "the push was answered after all"

    # A device token's subscriptions go with the token.
    tokens = DeviceTokenStore(server.agent_dir.path / DEVICE_TOKENS_FILE, clock=reactor.seconds)
    device_token = tokens.add("tablet")
    tablet = await RpcClient.connect(reactor, server.port, token=device_token)
    server.clients.append(tablet)
    await tablet.call("hello", {"client": {"name": "tests", "version": "1"}})
    await tablet.call("push.subscribe", {"subscription": push_service.subscription("c")})
    assert [s["device"] for s in (await tablet.call("push.list"))["subscriptions"]] == ["tablet"]
    # The phone (server token) sees its own only.
    assert len((await phone.call("push.list"))["subscriptions"]) == 1
    tokens.revoke("tablet")
    await tablet.closed
    fake_llm.script(Text("Sixth."))
    await settled_after(phone, session_id, "sixth")
    await push_service.wait_for(lambda p: p.message["body"] == "Sixth.")
    stored = json.loads((server.agent_dir.path / PUSH_SUBSCRIPTIONS_FILE).read_text())
    assert [s["device"] for s in stored["subscriptions"]] == [None]
    assert not [p for p in push_service.received if p.endpoint_id == "c"]
    assert (server.agent_dir.path / PUSH_SUBSCRIPTIONS_FILE).stat().st_mode & 0o777 == 0o600
