"""Web Push against a push-service stand-in on loopback https (tests/support/pushservice.py),
with the real pi agent: the VAPID JWT verifies against GET /push/key and the payload
decrypts with the subscription's keys; a session on screen is not pushed; 410 removes a
subscription; a push service that never answers delays no run; internal endpoints are
refused unless allowed; a revoked device token's subscriptions are gone."""

import json
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList

from piserver.security.pushsubscriptions import PUSH_SUBSCRIPTIONS_FILE
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore
from tests.integration.test_approvals import code_session, tool_messages
from tests.support.browser import Browser, ServiceWorkerWatch
from tests.support.fakellm import Reply, Text, ToolCall
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


# -- the installable web app in Chromium -------------------------------------------

# Presses an action of a shown notification, through the service worker (headless
# Chromium cannot click a notification); the worker answers when it is done.
PRESS_ACTION = """async ([tag, action]) => {
  const registration = await navigator.serviceWorker.ready;
  const channel = new MessageChannel();
  const answered = new Promise((done) => { channel.port1.onmessage = (e) => done(e.data); });
  registration.active.postMessage({ type: "notification-action", tag, action }, [channel.port2]);
  return answered;
}"""
# The notifications shown, once there are some (looked at every 50 ms in the page, as
# Playwright's own waits poll; the caller bounds the wait).
SHOWN_NOTIFICATIONS = """async (tag) => {
  const registration = await navigator.serviceWorker.ready;
  for (;;) {
    const shown = await registration.getNotifications(tag ? { tag } : {});
    if (shown.length) {
      return shown.map((n) => ({
        title: n.title, body: n.body, tag: n.tag, actions: n.actions.map((a) => a.action),
      }));
    }
    await new Promise((later) => setTimeout(later, 50));
  }
}"""
WORKER_STATE = """async () => {
  const registration = await navigator.serviceWorker.ready;
  const worker = registration.active;
  if (worker.state !== "activated") {
    await new Promise((done) => worker.addEventListener("statechange", () => {
      if (worker.state === "activated") done();
    }));
  }
  return [worker.state, registration.scope];
}"""


@pytest.fixture
def browser():
    started = Browser.start()
    yield started
    started.stop()


@pytest_twisted.ensureDeferred
async def test_the_web_app_installs_works_offline_and_shows_pushes(
    make_pi_server, fake_llm, push_service, browser, tmp_path
):
    server = make_pi_server(
        "--push-allow-endpoint",
        push_service.origin + "/push/",
        "--push-ca-file",
        str(push_service.cert_path),
        # Approval actions name the server so; the service worker posts them to its own.
        "--public-url",
        "https://pi.example.com",
    )
    response = await treq.get(f"http://127.0.0.1:{server.port}/push/key")
    push_service.server_key = json.loads(await response.content())["publicKey"]
    base = f"http://127.0.0.1:{server.port}"
    page = await browser.run(
        browser.new_profile_page(tmp_path / "profile", viewport={"width": 375, "height": 812})
    )
    page.set_default_timeout(30_000)
    await browser.run(page.context.grant_permissions(["notifications"], origin=base))
    await browser.run(page.goto(f"{base}/ui#token={server.token}"))
    await browser.run(page.locator("html[data-ready=true]").wait_for(state="attached"))
    assert page.url == base + "/ui/"
    state, scope = await browser.run(page.evaluate(WORKER_STATE)).addTimeout(30, reactor)
    assert (state, scope) == ("activated", base + "/ui/")
    # Push is offered (the permission is asked only when the button is pressed).
    await browser.run(page.locator("#notify").filter(has_text="Notify me").wait_for())

    cdp = await browser.run(page.context.new_cdp_session(page))
    errors = await browser.run(cdp.send("Page.getInstallabilityErrors"))
    assert errors["installabilityErrors"] == []
    manifest = await browser.run(cdp.send("Page.getAppManifest"))
    assert json.loads(manifest["data"])["display"] == "standalone"

    # What the server pushes (through the stand-in) shows as a notification.
    phone = await server.client()
    await phone.call("push.subscribe", {"subscription": push_service.subscription("w")})
    session_id = (await phone.call("session.create", {"mode": "chat"}))["sessionId"]
    fake_llm.script(Text("All done.\nSecond line."))
    await phone.call("prompt", {"message": "tidy up"}, session_id=session_id)
    push = await push_service.wait_for(lambda p: p.message["event"] == "run_finished")
    worker = await ServiceWorkerWatch(browser, cdp, "/ui/").start()
    shown = await worker.push(
        base,
        json.dumps(push.message),
        lambda: browser.run(page.evaluate(SHOWN_NOTIFICATIONS)),
        "notification",
    )
    assert [(n["title"], n["body"], n["actions"]) for n in shown] == [
        ("tidy up: finished", "All done.", [])
    ]

    # An approval's notification has Allow and Deny; Allow, pressed on the notification,
    # approves the call and the run goes on, the page never opened.
    code_id = await code_session(server, phone, tmp_path, permissionMode="ask")
    await phone.call("session.attach", {"sessionId": code_id})
    fake_llm.script(Reply(ToolCall("bash", {"command": "echo approved-from-lock-screen"})))
    fake_llm.script(Text("Ran it."))
    await phone.call("prompt", {"message": "run it"}, session_id=code_id)
    request = await phone.wait_for_event(is_type("approval_request", code_id))
    asked = await push_service.wait_for(
        lambda p: p.message["sessionId"] == code_id and p.message["event"] == "input_needed"
    )
    assert [a["action"] for a in asked.message["actions"]] == ["allow", "deny"]
    assert asked.urgency == "high"
    tag = f"session-{code_id}-input_needed"
    shown = await worker.push(
        base,
        json.dumps(asked.message),
        lambda: browser.run(page.evaluate(SHOWN_NOTIFICATIONS, tag)),
        "approval notification",
    )
    assert [(n["title"], n["actions"]) for n in shown] == [
        ("run it: waits for your answer", ["allow", "deny"])
    ]
    pressed = await browser.run(page.evaluate(PRESS_ACTION, [tag, "allow"]))
    assert pressed == {"ok": True}
    resolved = await phone.wait_for_event(is_type("approval_resolved", code_id))
    assert resolved["payload"]["approvalId"] == request["payload"]["approvalId"]
    assert (resolved["payload"]["decision"], resolved["payload"]["by"]) == ("allow", "action URL")
    await phone.wait_for_event(is_type("agent_settled", code_id))
    assert any("approved-from-lock-screen" in m for m in tool_messages(fake_llm))
    assert await browser.run(page.evaluate("window.__violations")) == []
    assert worker.errors == []

    # Without a network (and the server gone), the app still opens, from the service
    # worker's copy, and says so.
    await server.stop()
    await browser.run(page.context.set_offline(True))
    reloaded = await browser.run(page.goto(f"{base}/ui/sessions/{session_id}"))
    assert reloaded.from_service_worker
    await browser.run(page.locator("#offline-note").wait_for(state="visible"))
    assert await browser.run(page.locator("#connection").text_content()) in (
        "Offline",
        "Disconnected",
    )
