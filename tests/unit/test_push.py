"""Web Push with fakes: the endpoint policy, the subscription file, the VAPID key file, the
sender (signed, encrypted, TTL and urgency, retries, 404/410, a bounded answer) and the
notifier (nobody pushed about a session on screen, revoked tokens' subscriptions
dropped)."""

import base64
import json
import os

import attr
import http_ece
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import Logger

from piserver.agents.agentdir import shared_paths
from piserver.common.errors import InvalidParams
from piserver.ops.push import PushNotifier
from piserver.ops.webpush import MAX_ANSWER_BYTES, Delivery, WebPushSender
from piserver.security.pushendpoints import EndpointPolicy, EndpointRefused
from piserver.security.pushsubscriptions import (
    PUSH_SUBSCRIPTIONS_FILE,
    SERVER_OWNER,
    Subscription,
    SubscriptionStore,
    subscription_keys,
)
from piserver.security.scopes import Grant, Scope
from piserver.security.vapid import VAPID_KEY_FILE, application_server_key, load_or_create_vapid
from piserver.sessions.observer import InputKind, RunOutcome
from piserver.sessions.viewing import Viewing
from tests.support.deferreds import result_of
from tests.support.fakehttp import FakeHttp, FakeResponse

NAMES = {
    "push.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
    "localhost": ["127.0.0.1"],
    "intranet.example.com": ["93.184.216.34", "192.168.1.20"],
}


async def fake_resolve(host):
    if host not in NAMES:
        raise OSError("no such name")
    return NAMES[host]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@attr.s
class Browser:
    """A browser's side of one subscription: its key pair and auth secret."""

    endpoint: str = attr.ib(default="https://push.example.com/send/abc")
    private = attr.ib(factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = attr.ib(factory=lambda: os.urandom(16))

    def subscription(self, owner=SERVER_OWNER, device=None) -> Subscription:
        public = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return Subscription(self.endpoint, b64(public), b64(self.auth), owner, device)

    def open(self, body: bytes) -> dict:
        return json.loads(http_ece.decrypt(body, private_key=self.private, auth_secret=self.auth))


@attr.s
class Session:
    id: str = attr.ib(default="s1")
    name: str | None = attr.ib(default="fix the bug")
    repo_id: str | None = attr.ib(default=None)
    device: str | None = attr.ib(default=None)


@attr.s
class Connection:
    connection_id: str = attr.ib(default="c1")
    lost: list = attr.ib(factory=list)

    def on_lost(self, callback):
        self.lost.append(callback)


# -- endpoints --------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint, fragment",
    [
        ("http://push.example.com/send/1", "https"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://10.0.0.1/x", "private"),
        ("https://[::1]/x", "loopback"),
        ("https://[::ffff:127.0.0.1]/x", "loopback"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://0.0.0.0/x", "unspecified"),
        ("https://localhost/x", "127.0.0.1"),
        ("https://intranet.example.com/x", "192.168.1.20"),
        ("https://nowhere.example.com/x", "does not resolve"),
        ("https://user@push.example.com/x", "no user"),
        ("ftp://push.example.com/x", "https"),
        ("https://push.example.com/a b", "spaces"),
        (42, "URL"),
    ],
)
def test_internal_or_plain_endpoints_are_refused(endpoint, fragment):
    policy = EndpointPolicy(fake_resolve)
    with pytest.raises(EndpointRefused) as refused:
        check(policy, endpoint)
    assert fragment in refused.value.message
    assert refused.value.code == "invalid_params"


def check(policy, endpoint):
    return result_of(ensureDeferred(policy.check(endpoint)))


def test_public_endpoints_and_allowed_prefixes_pass():
    policy = EndpointPolicy(fake_resolve, ["https://127.0.0.1:8443/push/", "http://10.1.2.3/"])
    assert check(policy, "https://push.example.com/send/1") == "https://push.example.com/send/1"
    assert check(policy, "https://93.184.216.34/x") == "https://93.184.216.34/x"
    assert check(policy, "https://127.0.0.1:8443/push/a") == "https://127.0.0.1:8443/push/a"
    assert check(policy, "http://10.1.2.3/x") == "http://10.1.2.3/x"
    with pytest.raises(EndpointRefused):
        check(policy, "https://127.0.0.1:8444/push/a")


def test_subscription_keys_are_checked():
    browser = Browser().subscription()
    assert subscription_keys({"p256dh": browser.p256dh, "auth": browser.auth}) == (
        browser.p256dh,
        browser.auth,
    )
    for keys in (
        None,
        {},
        {"p256dh": "AAAA", "auth": browser.auth},
        {"p256dh": browser.p256dh, "auth": "c2hvcnQ"},
    ):
        with pytest.raises(InvalidParams):
            subscription_keys(keys)


# -- the subscription file --------------------------------------------------------


def test_subscriptions_are_kept_per_device_bounded_and_pruned(tmp_path):
    path = tmp_path / PUSH_SUBSCRIPTIONS_FILE
    store = SubscriptionStore(path, max_per_device=2)
    first, second, third = (Browser(endpoint=f"https://push.example.com/{i}") for i in range(3))
    assert store.add(first.subscription("tok-a", "phone")) == []
    assert store.add(second.subscription("tok-a", "phone")) == []
    dropped = store.add(third.subscription("tok-a", "phone"))
    assert [s.endpoint for s in dropped] == [first.endpoint]
    store.add(first.subscription(SERVER_OWNER))
    assert path.stat().st_mode & 0o777 == 0o600
    # Read back from the file as written.
    again = SubscriptionStore(path, max_per_device=2)
    assert [s.endpoint for s in again.of("tok-a")] == [second.endpoint, third.endpoint]
    # Registered again under another token, an endpoint moves.
    again.add(second.subscription("tok-b", "tablet"))
    assert [s.endpoint for s in again.of("tok-a")] == [third.endpoint]
    assert not again.remove(third.endpoint, owner="tok-b")
    assert again.prune(frozenset({"tok-b"})) == 1
    assert sorted(s.owner for s in again.all()) == [SERVER_OWNER, "tok-b"]
    assert again.remove(second.endpoint)
    assert [s.owner for s in SubscriptionStore(path).all()] == [SERVER_OWNER]


def test_no_agent_dir_links_the_push_files(tmp_path):
    load_or_create_vapid(tmp_path)
    SubscriptionStore(tmp_path / PUSH_SUBSCRIPTIONS_FILE).add(Browser().subscription())
    (tmp_path / "models.json").write_text("{}")
    assert [p.name for p in shared_paths(tmp_path)] == ["models.json"]


def test_the_vapid_key_is_made_once_private_and_served_as_a_point(tmp_path):
    vapid = load_or_create_vapid(tmp_path)
    path = tmp_path / VAPID_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    key = application_server_key(vapid)
    assert len(base64.urlsafe_b64decode(key + "=")) == 65 and key[0] == "B"
    assert application_server_key(load_or_create_vapid(tmp_path)) == key
    path.chmod(0o644)
    warned = []
    log = Logger(observer=warned.append)
    assert application_server_key(load_or_create_vapid(tmp_path, log)) == key
    assert "looser than 0600" in warned[0]["log_format"]


# -- sending ----------------------------------------------------------------------


def sender(http, clock, tmp_path, **kwargs):
    policy = EndpointPolicy(fake_resolve)
    return WebPushSender(http, clock, load_or_create_vapid(tmp_path), policy, **kwargs)


def send(push_sender, subscription, payload=b'{"title": "t"}', ttl=60, urgency="high"):
    return ensureDeferred(push_sender.send(subscription, payload, ttl, urgency))


def test_a_push_is_signed_and_encrypted_for_the_browser(tmp_path):
    http, clock, browser = FakeHttp(FakeResponse(201)), Clock(), Browser()
    clock.advance(1_000_000)
    push_sender = sender(http, clock, tmp_path)
    d = send(push_sender, browser.subscription(), b'{"title": "hello"}', 3600, "high")
    assert result_of(d) is Delivery.delivered
    (post,) = http.posts
    assert post.url == browser.endpoint
    headers = {name: values[0] for name, values in post.headers.items()}
    assert headers["TTL"] == "3600" and headers["Urgency"] == "high"
    assert headers["Content-Encoding"] == "aes128gcm"
    assert browser.open(post.data) == {"title": "hello"}
    assert Vapid02.verify(headers["Authorization"])
    claims = json.loads(
        base64.urlsafe_b64decode(headers["Authorization"].split("t=")[1].split(".")[1] + "==")
    )
    assert claims["aud"] == "https://push.example.com"
    assert claims["exp"] == 1_000_000 + 12 * 3600
    k = headers["Authorization"].split("k=")[1]
    assert k == application_server_key(load_or_create_vapid(tmp_path))


def test_failures_are_retried_with_backoff_and_gone_is_final(tmp_path):
    http, clock = FakeHttp(FakeResponse(503), ConnectionRefusedError(), FakeResponse(201)), Clock()
    push_sender = sender(http, clock, tmp_path, retry_delays=(0, 1, 2, 4))
    d = send(push_sender, Browser().subscription())
    assert len(http.posts) == 1 and not d.called
    clock.advance(1)
    assert len(http.posts) == 2
    clock.advance(2)
    assert result_of(d) is Delivery.delivered and len(http.posts) == 3

    for code in (404, 410):
        http = FakeHttp(FakeResponse(code))
        d = send(sender(http, clock, tmp_path), Browser().subscription())
        assert result_of(d) is Delivery.gone and len(http.posts) == 1

    http = FakeHttp(FakeResponse(400), FakeResponse(201))
    d = send(sender(http, clock, tmp_path), Browser().subscription())
    assert result_of(d) is Delivery.failed and len(http.posts) == 1


def test_an_unanswered_push_times_out_and_a_long_answer_is_not_read(tmp_path):
    clock = Clock()
    http = FakeHttp(None)
    d = send(
        sender(http, clock, tmp_path, retry_delays=(0,), attempt_timeout=5),
        Browser().subscription(),
    )
    assert not d.called
    clock.advance(5)
    assert result_of(d) is Delivery.failed

    long_answer = FakeResponse(201, b"x" * (MAX_ANSWER_BYTES * 10))
    http = FakeHttp(long_answer)
    assert result_of(send(sender(http, clock, tmp_path), Browser().subscription())) is (
        Delivery.delivered
    )
    assert long_answer.aborted and long_answer.delivered <= MAX_ANSWER_BYTES + 1024


def test_an_endpoint_that_resolves_inside_is_checked_again_before_sending(tmp_path):
    http = FakeHttp()
    browser = Browser(endpoint="https://localhost/x")
    assert result_of(send(sender(http, Clock(), tmp_path), browser.subscription())) is (
        Delivery.failed
    )
    assert http.posts == []


# -- what is pushed ---------------------------------------------------------------


def notifier(tmp_path, http, grants=None, action_urls=None):
    store = SubscriptionStore(tmp_path / PUSH_SUBSCRIPTIONS_FILE)
    viewing = Viewing()
    push_sender = sender(http, Clock(), tmp_path)
    grants = {"tok-a": Grant(device="phone")} if grants is None else grants
    push = PushNotifier(store, push_sender, viewing, lambda: grants, action_urls=action_urls)
    return push, store, viewing


def test_runs_are_pushed_unless_on_screen(tmp_path):
    http = FakeHttp()
    push, store, viewing = notifier(tmp_path, http)
    browser = Browser()
    store.add(browser.subscription("tok-a", "phone"))
    session, connection = Session(), Connection()
    viewing.set(connection, session.id, True)
    push.run_ended(session, RunOutcome.OK, "Seen.")
    assert http.posts == []
    viewing.set(connection, session.id, False)
    push.run_ended(session, RunOutcome.OK, "\nDone it.\nDetails")
    (post,) = http.posts
    assert browser.open(post.data) == {
        "event": "run_finished",
        "title": "fix the bug: finished",
        "body": "Done it.",
        "sessionId": "s1",
        "url": "/ui/sessions/s1",
    }
    assert post.headers["Urgency"] == ["normal"]
    # Visible again, then the connection goes: not looking any more.
    viewing.set(connection, session.id, True)
    connection.lost[0](connection)
    push.input_needed(session, InputKind.NATIVE_TOOL, "the agent waits for get_location")
    assert browser.open(http.posts[1].data)["event"] == "input_needed"
    assert http.posts[1].headers["Urgency"] == ["high"]


def test_revoked_gone_and_out_of_reach_subscriptions_get_nothing(tmp_path):
    http = FakeHttp(FakeResponse(410))
    grants = {
        "tok-a": Grant(device="phone"),
        "tok-repo": Grant(device="ci", repos=frozenset({"other-repo"})),
        "tok-blind": Grant(device="pager", scopes=frozenset({Scope.PROMPT})),
    }
    push, store, _ = notifier(tmp_path, http, grants)
    kept, revoked, limited, blind = (
        Browser(endpoint=f"https://push.example.com/{i}") for i in range(4)
    )
    store.add(kept.subscription("tok-a"))
    store.add(revoked.subscription("tok-gone"))
    store.add(limited.subscription("tok-repo"))
    store.add(blind.subscription("tok-blind"))
    push.agent_crashed(Session(repo_id="this-repo"), 1, None)
    assert [p.url for p in http.posts] == [kept.endpoint]
    # The 410 removed the one pushed to; the revoked token's went before the push.
    assert sorted(s.owner for s in store.all()) == ["tok-blind", "tok-repo"]


@attr.s
class ApprovalRequest:
    approval_id: str = attr.ib(default="a1")
    tool_name: str = attr.ib(default="bash")
    summary: str = attr.ib(default="rm -rf build")


def test_approval_actions_go_only_to_tokens_that_may_approve(tmp_path):
    http = FakeHttp()
    grants = {
        "tok-approver": Grant(device="phone"),
        "tok-watcher": Grant(device="tv", scopes=frozenset({Scope.READ})),
    }
    push, store, _ = notifier(
        tmp_path,
        http,
        grants,
        action_urls=lambda request: {
            d: f"https://pi.example.com/approval-action?t={request.approval_id}-{d}"
            for d in ("allow", "deny")
        },
    )
    approver, watcher = (Browser(endpoint=f"https://push.example.com/{i}") for i in range(2))
    store.add(approver.subscription("tok-approver"))
    store.add(watcher.subscription("tok-watcher"))
    push.approval_requested(Session(), ApprovalRequest())
    by_url = {post.url: post for post in http.posts}
    offered = approver.open(by_url[approver.endpoint].data)
    assert offered["body"] == "the agent asks to run bash: rm -rf build"
    assert offered["actions"] == [
        {
            "action": "allow",
            "title": "Allow",
            "url": "https://pi.example.com/approval-action?t=a1-allow",
        },
        {
            "action": "deny",
            "title": "Deny",
            "url": "https://pi.example.com/approval-action?t=a1-deny",
        },
    ]
    assert "actions" not in watcher.open(by_url[watcher.endpoint].data)
    assert by_url[watcher.endpoint].headers["Urgency"] == ["high"]


def test_budget_warnings_and_stops_are_pushed(tmp_path):
    # Budgets tell every notifier (sessions/budgets.py): the webhooks' and this one.
    http = FakeHttp()
    push, store, _ = notifier(tmp_path, http)
    browser = Browser()
    store.add(browser.subscription("tok-a", "phone"))
    session = Session()
    push.notify("budget_warning", session, "80 % of the session's budget of $1.00")
    push.notify("budget_reached", session, "the session's budget is spent; the run was stopped")
    warning, stop = (browser.open(post.data) for post in http.posts)
    assert warning["title"] == "fix the bug: 80 % of a budget spent"
    assert stop["title"] == "fix the bug: stopped: budget spent"
    assert stop["body"] == "the session's budget is spent; the run was stopped"
    assert http.posts[1].headers["Urgency"] == ["high"]
