"""Notifications: what is sent when, the signature, retries with backoff, never blocking."""

import hashlib
import hmac
import json

import attr
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python import usage

from piserver.ops.notify import MAX_ANSWER_BYTES, SIGNATURE_HEADER, Notifier, shown_url
from piserver.security.redact import secret_values
from piserver.sessions.observer import InputKind, RunWatcher
from piserver.tap import Options
from tests.support.fakehttp import FakeResponse
from tests.support.piagent import VERSION_ONLY_PI

SECRET = "notify-unit-secret"
URL = "http://127.0.0.1:9/hook/secret-topic?token=abc"


@attr.s
class Session:
    id: str = attr.ib(default="s1")
    name: str | None = attr.ib(default="fix the bug")


class FakeHttp:
    def __init__(self):
        self.posts = []

    def post(self, url, data, headers):
        d = Deferred()
        self.posts.append((url, data, headers, d))
        return d

    def answer(self, index, code=200, body=b""):
        response = FakeResponse(code, body)
        self.posts[index][3].callback(response)
        return response


def make(http=None, clock=None, **kwargs):
    events = []
    notifier = Notifier([URL], http or FakeHttp(), clock or Clock(), secret=SECRET, **kwargs)
    notifier.log = Logger(observer=events.append)
    return notifier, events


def test_a_run_finished_notification_is_signed():
    http, clock = FakeHttp(), Clock()
    notifier, _ = make(http, clock)
    session = Session()
    runs = RunWatcher(notifier)
    runs.event(
        session,
        "message_end",
        {"message": {"role": "assistant", "content": [{"type": "text", "text": "All  done.\n"}]}},
    )
    runs.event(session, "agent_settled", {"aborted": False, "error": None})
    [(url, body, headers, _)] = http.posts
    assert url == URL
    assert json.loads(body) == {
        "event": "run_finished",
        "sessionId": "s1",
        "name": "fix the bug",
        "summary": "All done.",
        "time": 0.0,
    }
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == [f"sha256={expected}"]
    assert headers["Title"] == ["pi-server: run finished (fix the bug)"]


def test_a_long_answer_is_not_read_whole():
    """Issue 21 point 14: an endpoint answering 800 MB cost 1.6 GB; now a bound is read."""
    http = FakeHttp()
    notifier, events = make(http)
    notifier.input_needed(Session(), InputKind.DIALOG, "the agent asks: Delete it?")
    answer = http.answer(0, 200, b"x" * (MAX_ANSWER_BYTES * 100))
    assert answer.aborted and answer.delivered <= MAX_ANSWER_BYTES + 1024
    assert not [e for e in events if e.get("log_level").name in ("warn", "error", "critical")]


def test_what_each_happening_notifies():
    http = FakeHttp()
    notifier, _ = make(http)
    session = Session(name=None)
    runs = RunWatcher(notifier)
    detail = "the agent waits for the device tool get_location"
    notifier.input_needed(session, InputKind.NATIVE_TOOL, detail)
    notifier.input_needed(session, InputKind.DIALOG, "the agent asks: Delete it?")
    runs.event(session, "agent_exit", {"code": 1, "signal": None})
    runs.event(session, "agent_settled", {"error": {"message": "boom"}})
    runs.event(session, "message_update", {})
    notifier.agent_restarted(session)
    for i in range(4):
        http.answer(i)  # one at a time per URL, in order
    sent = [json.loads(body) for _, body, _, _ in http.posts]
    assert [(s["event"], s["summary"]) for s in sent] == [
        ("input_needed", "the agent waits for the device tool get_location"),
        ("input_needed", "the agent asks: Delete it?"),
        ("agent_failed", "the agent exited (code 1)"),
        ("run_finished", "the run failed: boom"),
    ]


def test_retried_with_backoff_then_delivered():
    http, clock = FakeHttp(), Clock()
    notifier, events = make(http, clock)
    notifier.notify("run_finished", Session(), "done")
    http.answer(0, code=500)
    assert len(http.posts) == 1
    clock.advance(0.9)
    assert len(http.posts) == 1
    clock.advance(0.1)
    assert len(http.posts) == 2  # after 1 s
    http.answer(1, code=503)
    clock.advance(1.9)
    assert len(http.posts) == 2
    clock.advance(0.1)
    assert len(http.posts) == 3  # 2 s later
    http.answer(2)
    assert http.posts[0][1] == http.posts[2][1]
    assert events == []


def test_a_receiver_that_never_answers_delays_nothing_and_is_logged_once():
    http, clock = FakeHttp(), Clock()
    notifier, events = make(http, clock, retry_delays=(0, 1), attempt_timeout=5)
    session = Session()
    # Returns at once although nothing ever answers.
    notifier.notify("run_finished", session, "one")
    notifier.notify("input_needed", session, "two")
    assert len(http.posts) == 1
    clock.advance(5)  # the first try times out
    clock.advance(1)
    assert len(http.posts) == 2
    clock.advance(5)  # the last try of "one" times out: logged
    assert len(events) == 1
    assert "no answer within 5 s" in events[0]["problem"]
    assert events[0]["url"] == "http://127.0.0.1:9"
    # "two" fails the same way: not logged again.
    assert len(http.posts) == 3
    clock.advance(5)
    clock.advance(1)
    clock.advance(5)
    assert len(http.posts) == 4 and len(events) == 1
    # It works again: said once, and a later failure is logged again.
    notifier.notify("run_finished", session, "three")
    http.answer(4)
    assert len(events) == 2 and "work again" in events[1]["log_format"]


def test_summaries_are_redacted():
    http = FakeHttp()
    notifier, _ = make(http, redact=lambda text: text.replace("sk-secret", "[redacted]"))
    notifier.notify("agent_failed", Session(), "the key sk-secret is wrong")
    assert json.loads(http.posts[0][1])["summary"] == "the key [redacted] is wrong"


def test_unsigned_without_a_secret():
    http = FakeHttp()
    notifier = Notifier([URL], http, Clock())
    notifier.notify("run_finished", Session(), "done")
    assert SIGNATURE_HEADER not in http.posts[0][2]


def test_nothing_is_sent_after_stop():
    http = FakeHttp()
    notifier, _ = make(http)
    notifier.startService()
    notifier.stopService()
    notifier.notify("run_finished", Session(), "done")
    assert http.posts == []


def test_the_log_shows_no_path_or_query():
    assert shown_url(URL) == "http://127.0.0.1:9"
    assert shown_url("https://ntfy.example/topic") == "https://ntfy.example"


def test_options(tmp_path):
    def parse(*args, environ=None):
        options = Options(environ={"PATH": "/usr/bin:/bin", **(environ or {})})
        options.parseOptions(["--data-dir", str(tmp_path), "--pi", VERSION_ONLY_PI, *args])
        return options.config

    config = parse(
        "--notify-url",
        "http://127.0.0.1:1/a",
        "--notify-url",
        "https://x.example/b",
        environ={"PI_SERVER_NOTIFY_SECRET": SECRET},
    )
    assert config.notify_urls == ("http://127.0.0.1:1/a", "https://x.example/b")
    assert config.notify_secret == SECRET
    assert SECRET in secret_values(config)
    assert parse().notify_urls == ()
    with pytest.raises(usage.UsageError, match="not an http"):
        parse("--notify-url", "ftp://x")


def test_an_approval_request_carries_its_action_urls():
    from piserver.sessions.approvals import ApprovalRequest

    request = ApprovalRequest("a1", "r1", "c1", "bash", "make", {"command": "make"}, 60.0)
    urls = {"allow": "https://h/approval-action?t=A", "deny": "https://h/approval-action?t=D"}
    http = FakeHttp()
    notifier, events = make(http, action_urls=lambda r: urls if r is request else None)
    notifier.approval_requested(Session(), request)
    (sent,) = [json.loads(body) for _, body, _, _ in http.posts]
    assert sent["event"] == "input_needed" and sent["approvalId"] == "a1"
    assert sent["summary"] == "the agent asks to run bash: make"
    assert sent["actions"] == [
        {"action": "http", "label": "Allow", "url": urls["allow"], "method": "POST", "clear": True},
        {"action": "http", "label": "Deny", "url": urls["deny"], "method": "POST", "clear": True},
    ]
    http.answer(0)
    assert "t=A" not in json.dumps([str(e) for e in events])


def test_control_characters_leave_the_title_header():
    """Issue 21 point 14: a session name cannot add header lines or terminal escapes."""
    http, clock = FakeHttp(), Clock()
    notifier, _ = make(http, clock)
    runs = RunWatcher(notifier)
    session = Session(name="evil\r\nX-Injected: 1\x1b[31m\x00é")
    runs.event(session, "agent_settled", {"aborted": False, "error": None})
    [(_, _, headers, _)] = http.posts
    (title,) = headers["Title"]
    assert all(0x20 <= ord(c) < 0x7F for c in title)
    assert "evil" in title and "X-Injected: 1" in title
