"""--log-level and --log-format observers, the secret redaction in front of them, and
the access log's health probes."""

import io
import json
import sys

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher, eventsFromJSONLogFile
from twisted.python import usage
from twisted.python.logfile import LogFile
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from piserver.ops.logs import make_observer, twistd_log_file, twistd_observer
from piserver.security.redact import REDACTED, Redactor
from piserver.tap import Options
from piserver.web.site import make_site
from tests.support.piagent import VERSION_ONLY_PI

SECRET = "sk-unit-test-secret-value"


def logger_to(observer, redactor=None):
    publisher = LogPublisher()
    if redactor is not None:
        redactor.install(publisher)
    publisher.addObserver(observer)
    return Logger(namespace="tests.logconfig", observer=publisher)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_events_below_the_level_are_dropped(log_format):
    out = io.StringIO()
    log = logger_to(make_observer(out, "info", log_format))
    log.debug("frame {n}", n=1)
    log.info("session {session_id} created", session_id="s1")
    log.warn("careful")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "session s1 created" in lines[0] and "careful" in lines[1]


def test_debug_level_keeps_everything():
    out = io.StringIO()
    log = logger_to(make_observer(out, "debug"))
    log.debug("frame {n}", n=1)
    assert "frame 1" in out.getvalue()


def test_json_lines_carry_the_fields_and_read_back():
    out = io.StringIO()
    log = logger_to(make_observer(out, "info", "json"))
    log.info("session {session_id} created ({mode})", session_id="s1", mode="chat")
    record = json.loads(out.getvalue())
    assert record["session_id"] == "s1" and record["mode"] == "chat"
    assert record["text"] == "session s1 created (chat)"
    assert record["level"] == "info"
    assert record["log_namespace"] == "tests.logconfig"
    # twisted.logger reads its own JSON form back.
    [event] = eventsFromJSONLogFile(io.StringIO(out.getvalue()))
    assert event["log_level"] is LogLevel.info


def test_json_lines_of_failures():
    out = io.StringIO()
    log = logger_to(make_observer(out, "info", "json"))
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        log.failure("while handling {method}", method="prompt")
    record = json.loads(out.getvalue())
    assert record["level"] == "critical" and record["method"] == "prompt"
    assert "ZeroDivisionError" in json.dumps(record["log_failure"])


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_are_redacted_in_both_formats(log_format):
    out = io.StringIO()
    log = logger_to(make_observer(out, "info", log_format), Redactor([SECRET]))
    log.info("token {token} seen", token=SECRET, extra=f"x{SECRET}x")
    written = out.getvalue()
    assert SECRET not in written
    assert REDACTED in written
    if log_format == "json":
        record = json.loads(written)
        assert record["text"] == f"token {REDACTED} seen"
        assert record["extra"] == f"x{REDACTED}x"


@pytest.mark.parametrize(
    "twistd, expected",
    [
        ({"nodaemon": True, "logfile": None}, "stdout"),
        ({"nodaemon": True, "logfile": "-"}, "stdout"),
        ({"nodaemon": False, "logfile": None}, "twistd.log"),
        ({"nodaemon": True, "logfile": "pi.log"}, "pi.log"),
    ],
)
def test_the_file_twistd_would_log_to(tmp_path, monkeypatch, twistd, expected):
    monkeypatch.chdir(tmp_path)
    target = twistd_log_file(twistd)
    if expected == "stdout":
        assert target is sys.stdout
    else:
        assert isinstance(target, LogFile) and target.path == str(tmp_path / expected)
        target.close()


def test_twistds_own_logger_option_wins():
    assert twistd_observer({"logger": "some.factory"}, "info", "text") is None


def parse(tmp_path, args, twistd=None):
    options = Options(environ={"PATH": "/usr/bin:/bin"})
    if twistd is not None:
        options.parent = twistd
    options.parseOptions(["--data-dir", str(tmp_path / "data"), "--pi", VERSION_ONLY_PI, *args])
    return options


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--log-level", "verbose"], "--log-level is one of"),
        (["--log-format", "xml"], "--log-format is one of"),
    ],
)
def test_bad_log_options(tmp_path, args, fragment):
    with pytest.raises(usage.UsageError, match=fragment.replace("-", r"\-")):
        parse(tmp_path, args)


def test_a_daemon_cannot_log_to_stdout(tmp_path):
    with pytest.raises(usage.UsageError, match="standard output"):
        parse(tmp_path, [], twistd={"logfile": "-", "nodaemon": False})


def test_health_probes_can_be_left_out_of_the_access_log(tmp_path):
    options = parse(tmp_path, ["--no-health-log"])
    assert options.config.log_health is False
    assert parse(tmp_path, []).config.log_health is True
    for log_health, logged in ((True, [b"/health", b"/"]), (False, [b"/"])):
        site = make_site(Resource(), {}, log_health=log_health)
        lines = []
        site._logFile = _Lines(lines)
        for path in (b"/health", b"/"):
            request = DummyRequest([path])
            request.path = request.uri = path
            request.code, request.sentLength, request.clientproto = 200, 10, b"HTTP/1.1"
            site.log(request)
        assert [line.split('"')[3].split()[1].encode() for line in lines] == logged


class _Lines:
    def __init__(self, lines):
        self.lines = lines

    def write(self, line):
        self.lines.append(line)
