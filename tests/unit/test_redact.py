"""Log redaction: secrets never reach an observer that writes the log."""

import io
import os
import sys
import warnings

import pytest
from twisted.logger import (
    LogBeginner,
    Logger,
    LogLevel,
    LogPublisher,
    eventAsText,
    formatEvent,
    globalLogPublisher,
    textFileLogObserver,
)

from piserver.security.redact import (
    REDACTED,
    REVEAL_FIELD,
    RedactingObserver,
    Redactor,
    secret_values,
)
from piserver.tap import Options, makeService
from tests.support.piagent import VERSION_ONLY_PI

TOKEN = "server-token-0123456789abcdef"
API_KEY = "sk-live-abcdefghijklmnop"


class Holder:
    def __init__(self, secret):
        self.secret = secret

    def __repr__(self):
        return f"Holder({self.secret})"


def test_redact_text():
    redactor = Redactor([TOKEN, API_KEY, "short", None])
    assert redactor.redact(f"a {TOKEN} b {API_KEY} c short") == f"a {REDACTED} b {REDACTED} c short"
    assert redactor.redact("nothing here") == "nothing here"


def test_longest_secret_first():
    redactor = Redactor(["abcdefgh", "abcdefgh-and-more"])
    assert redactor.redact("x abcdefgh-and-more y abcdefgh") == f"x {REDACTED} y {REDACTED}"


def test_clean_events_pass_through_untouched():
    redactor = Redactor([TOKEN])
    event = {"log_format": "hello {who}", "who": "world", "log_level": None}
    assert redactor.redact_event(event) is event
    without_secrets = {"log_format": TOKEN}
    assert Redactor().redact_event(without_secrets) is without_secrets


def test_formatted_fields_and_unreferenced_fields_are_redacted():
    redactor = Redactor([TOKEN])
    event = {
        "log_format": "connect with ws://h/rpc?token={token}",
        "token": TOKEN,
        "extra": TOKEN.encode(),
        "holder": Holder(TOKEN),
        "fine": 3,
    }
    redacted = redactor.redact_event(event)
    assert redacted is not event and event["token"] == TOKEN  # the original is unchanged
    assert formatEvent(redacted) == f"connect with ws://h/rpc?token={REDACTED}"
    assert TOKEN not in repr(redacted)
    assert redacted["fine"] == 3


def test_secret_in_the_format_string_itself():
    redactor = Redactor([TOKEN])
    redacted = redactor.redact_event({"log_format": f"oops {TOKEN} {{n}}", "n": 1})
    assert formatEvent(redacted) == f"oops {REDACTED} 1"


def test_tracebacks_are_redacted():
    redactor = Redactor([API_KEY])
    events = []
    log = Logger(observer=lambda event: events.append(redactor.redact_event(event)))
    try:
        raise RuntimeError(f"the provider refused key {API_KEY}")
    except RuntimeError:
        log.failure("calling the provider failed")
    text = eventAsText(events[0], includeTraceback=True)
    assert API_KEY not in text
    assert "Traceback" in text and "RuntimeError" in text and REDACTED in text
    assert "calling the provider failed" in text

    try:
        raise RuntimeError("nothing secret")
    except RuntimeError:
        log.failure("another failure")
    assert events[1]["log_failure"].check(RuntimeError)  # clean failures are kept as they are


def test_reveal_field_lets_the_one_start_up_line_through():
    redactor = Redactor([TOKEN])
    event = {"log_format": "connect with ?token={token}", "token": TOKEN, REVEAL_FIELD: True}
    assert redactor.redact_event(event) is event


def test_redacting_observer_wraps_a_file_observer():
    output = io.StringIO()
    log = Logger(observer=RedactingObserver(textFileLogObserver(output), Redactor([TOKEN])))
    log.info("token is {token}", token=TOKEN)
    log.info("nothing to hide")
    written = output.getvalue()
    assert TOKEN not in written
    assert f"token is {REDACTED}" in written and "nothing to hide" in written


def test_installed_before_logging_begins_covers_buffered_and_later_events():
    # What twistd does: events are buffered until beginLoggingTo adds its observer.
    publisher = LogPublisher()
    beginner = LogBeginner(publisher, io.StringIO(), sys, warnings)
    log = Logger(observer=publisher)
    log.info("early line with {token}", token=TOKEN)
    redactor = Redactor([TOKEN])
    redactor.install(publisher)
    log.info("buffered line with {token}", token=TOKEN)
    output = io.StringIO()
    beginner.beginLoggingTo([textFileLogObserver(output)], redirectStandardIO=False)
    log.info("later line with {token}", token=TOKEN)
    written = output.getvalue()
    assert TOKEN not in written
    assert written.count(REDACTED) == 3
    redactor.uninstall(publisher)
    log.info("after uninstall {token}", token=TOKEN)
    assert TOKEN in output.getvalue()


@pytest.fixture
def options(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / ".env").write_text(f"OPENAI_API_KEY={API_KEY}\nSHORT=abc\nMODE=production-mode\n")
    options = Options(
        environ={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "GITHUB_TOKEN": "ghp_0123456789abcdefghij",
            "ANTHROPIC_API_KEY": "sk-ant-0123456789",
            "EDITOR": "vim-and-more-vim",
        }
    )
    options.parseOptions(
        [
            "--data-dir",
            str(data),
            "--pi",
            VERSION_ONLY_PI,
            "--auth-token",
            TOKEN,
            "--port",
            "tcp:0:interface=127.0.0.1",
        ]
    )
    return options


def test_secret_values_of_a_config(options):
    assert secret_values(options.config) == {
        TOKEN,
        API_KEY,
        "production-mode",
        "ghp_0123456789abcdefghij",
        "sk-ant-0123456789",
    }


def test_make_service_installs_redaction_until_the_tree_stops(options):
    service = makeService(options)
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        Logger().info("key {key} and token {token}", key=API_KEY, token=TOKEN)
        assert formatEvent(seen[-1]) == f"key {REDACTED} and token {REDACTED}"
        redaction = service.getServiceNamed("redaction")
        redaction.stopService()
        Logger().info("token {token}", token=TOKEN)
        assert formatEvent(seen[-1]) == f"token {TOKEN}"
    finally:
        globalLogPublisher.removeObserver(seen.append)


@pytest.mark.parametrize(
    "text",
    [
        "GET /rpc?token=d3v1c3-t0k3n-unknown HTTP/1.1",
        "GET /rpc?x=1&TOKEN=d3v1c3-t0k3n-unknown&y=2",
        "GET /rpc?token=%64%33%76%31%63%33 HTTP/1.1",
        "referer http://a/b%3Ftoken%3Dd3v1c3-t0k3n-unknown",
        "{'authorization': 'Bearer d3v1c3-t0k3n-unknown', 'host': 'h'}",
        "b'Authorization: bearer d3v1c3-t0k3n-unknown\\r\\nHost: x'",
        "params {'token': ['d3v1c3-t0k3n-unknown']}",
    ],
)
def test_credentials_of_requests_are_redacted_without_being_known(text):
    redacted = Redactor().redact_event({"log_format": "{line}", "line": text})
    shown = formatEvent(redacted)
    assert "d3v1c3" not in shown and "%64%33" not in shown
    assert REDACTED in shown


def test_events_below_the_level_are_not_written():
    output = io.StringIO()
    observer = RedactingObserver(textFileLogObserver(output), Redactor())
    log = Logger(observer=observer)
    log.debug("raw request {line}", line="GET /rpc HTTP/1.1")
    log.info("shown")
    assert "raw request" not in output.getvalue() and "shown" in output.getvalue()
    verbose = io.StringIO()
    Logger(
        observer=RedactingObserver(textFileLogObserver(verbose), Redactor(min_level=LogLevel.debug))
    ).debug("asked for")
    assert "asked for" in verbose.getvalue()
