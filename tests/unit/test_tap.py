"""Command-line options, start-up errors and the service tree built from them."""

import collections
import os
import re
import stat

import pytest
from autobahn.twisted.resource import WebSocketResource
from twisted.application.internet import StreamServerEndpointService
from twisted.python import usage

from piserver.common.defaults import DEFAULT_MAX_FRAME_SIZE
from piserver.tap import Options, makeService
from tests.support.piagent import OLD_PI, VERSION_ONLY_PI, repository_root


def parse(args, environ=None, home=None):
    environ = dict(environ or {})
    environ.setdefault("PATH", os.environ.get("PATH", ""))
    if home is not None:
        environ.setdefault("HOME", str(home))
    options = Options(environ=environ)
    options.parseOptions(args)
    return options


@pytest.fixture
def base(tmp_path):
    return ["--data-dir", str(tmp_path / "data"), "--pi", VERSION_ONLY_PI]


def test_defaults(tmp_path, base):
    config = parse(base).config
    assert config.endpoint == "tcp:3141:interface=0.0.0.0"
    assert config.max_frame_size == DEFAULT_MAX_FRAME_SIZE
    assert config.idempotency_window == 24 * 3600
    assert config.pi_command == (VERSION_ONLY_PI,)
    assert config.auth_token_source == "generated"
    token_file = tmp_path / "data" / "server-token"
    assert token_file.read_text().strip() == config.auth_token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert (tmp_path / "data" / "sessions").is_dir()
    # The same token is read back on the next start.
    again = parse(base).config
    assert (again.auth_token, again.auth_token_source) == (config.auth_token, "file")


@pytest.mark.parametrize(
    "port, host, expected",
    [
        ("4000", "0.0.0.0", "tcp:4000:interface=0.0.0.0"),
        ("4000", "::", r"tcp:4000:interface=\:\:"),
        (r"tcp:3141:interface=\:\:", "0.0.0.0", r"tcp:3141:interface=\:\:"),
        ("unix:/tmp/pi.sock", "0.0.0.0", "unix:/tmp/pi.sock"),
    ],
)
def test_port_numbers_and_endpoint_strings(base, port, host, expected):
    assert parse(base + ["--port", port, "--host", host]).config.endpoint == expected


def test_port_from_environment(base):
    assert parse(base, {"PI_SERVER_PORT": "5000"}).config.endpoint.startswith("tcp:5000:")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--port", "99999"], "1-65535"),
        (["--port", "nonsense"], "port number or an endpoint"),
        (["--port", "bogus:1234"], "--port"),
        (["--port", "ssl:4443:privateKey=/nonexistent.pem"], "--port"),
        (["--max-frame-size", "10"], "at least 1024"),
        (["--git-author", "just a name"], 'of the form "Name <mail>"'),
        (["--idempotency-window", "0"], "--idempotency-window must be positive"),
        (["--daily-budget", "0"], "--daily-budget must be positive"),
        (["--daily-budget", "nan"], "--daily-budget must be positive"),
        (["--daily-token-budget", "-5"], "--daily-token-budget must be positive"),
        (["--budget-timezone", "Mars/Olympus"], "not an IANA time zone"),
        (["--budget-timezone", "../../etc/passwd"], "not an IANA time zone"),
    ],
)
def test_bad_values_are_usage_errors(base, args, fragment):
    with pytest.raises(usage.UsageError, match=fragment.replace("-", r"\-")):
        parse(base + args)


def test_budgets(base):
    config = parse(base).config
    assert (config.daily_budget, config.daily_token_budget) == (None, None)
    assert str(config.budget_timezone) == "UTC"
    config = parse(
        base
        + ["--daily-budget", "2.5", "--daily-token-budget", "100000"]
        + ["--budget-timezone", "Europe/Paris"]
    ).config
    assert (config.daily_budget, config.daily_token_budget) == (2.5, 100000)
    assert str(config.budget_timezone) == "Europe/Paris"


def test_git_author(base):
    assert parse(base).config.git_author is None
    config = parse(base + ["--git-author", " Pi Bot <bot@example.invalid> "]).config
    assert config.git_author == ("Pi Bot", "bot@example.invalid")


def test_unknown_option(base):
    with pytest.raises(usage.UsageError, match="no-such-option"):
        parse(base + ["--no-such-option"])


def test_unusable_data_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(usage.UsageError, match="data dir"):
        parse(["--data-dir", str(blocker / "data"), "--pi", VERSION_ONLY_PI])


def test_data_dir_defaults(tmp_path):
    home = tmp_path / "home"
    assert (
        parse(["--pi", VERSION_ONLY_PI], home=home).config.data_dir
        == home / ".local" / "share" / "pi-server"
    )
    xdg = parse(["--pi", VERSION_ONLY_PI], {"XDG_DATA_HOME": str(tmp_path / "xdg")}, home=home)
    assert xdg.config.data_dir == tmp_path / "xdg" / "pi-server"
    explicit = parse(
        ["--pi", VERSION_ONLY_PI],
        {"XDG_DATA_HOME": str(tmp_path / "xdg"), "PI_SERVER_DATA_DIR": str(tmp_path / "d")},
        home=home,
    )
    assert explicit.config.data_dir == tmp_path / "d"


def test_missing_agent_names_the_installer(tmp_path):
    environ = {"PATH": str(tmp_path), "PI_SERVER_PROJECT_DIR": str(tmp_path)}
    with pytest.raises(usage.UsageError, match="scripts/install-pi"):
        parse(["--data-dir", str(tmp_path / "d")], environ)
    with pytest.raises(usage.UsageError, match="not found"):
        parse(["--data-dir", str(tmp_path / "d"), "--pi", str(tmp_path / "missing")], environ)


def test_agent_lookup_order(tmp_path):
    def executable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\necho 1.6.0\n")
        path.chmod(0o755)
        return str(path)

    local = executable(tmp_path / "project" / "node_modules" / ".bin" / "pi")
    on_path = executable(tmp_path / "bin" / "pi")
    from_env = executable(tmp_path / "env" / "pi")
    data = ["--data-dir", str(tmp_path / "d")]
    environ = {"PATH": "/usr/bin", "PI_SERVER_PROJECT_DIR": str(tmp_path / "project")}
    assert parse(data, environ).config.pi_command == (local,)
    environ["PATH"] = str(tmp_path / "bin")
    assert parse(data, environ).config.pi_command == (on_path,)
    environ["PI_SERVER_PI"] = from_env
    assert parse(data, environ).config.pi_command == (from_env,)
    assert parse(data + ["--pi", local], environ).config.pi_command == (local,)


def test_auth_token_sources(tmp_path, base):
    assert parse(base + ["--auth-token", "abc"]).config.auth_token == "abc"
    assert parse(base, {"PI_SERVER_AUTH_TOKEN": "xyz"}).config.auth_token == "xyz"
    no_auth = parse(base + ["--no-auth"]).config
    assert no_auth.auth_token is None


def test_auth_token_file_keeps_the_token_off_the_command_line(tmp_path, base):
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-token\n")
    token_file.chmod(0o600)
    config = parse(base + ["--auth-token-file", str(token_file)]).config
    assert (config.auth_token, config.auth_token_source) == ("from-a-file-token", "option")
    token_file.write_text("")
    with pytest.raises(usage.UsageError, match="is empty"):
        parse(base + ["--auth-token-file", str(token_file)])
    with pytest.raises(usage.UsageError, match="No such file"):
        parse(base + ["--auth-token-file", str(tmp_path / "missing")])
    with pytest.raises(usage.UsageError, match="give one of them"):
        parse(base + ["--auth-token-file", str(token_file), "--auth-token", "x"])
    assert "--auth-token-file" in str(Options())


def test_dotenv_loaded_and_problems_kept_without_values(tmp_path, base):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    dotenv = data / ".env"
    dotenv.write_text("OPENAI_API_KEY=sk-secret-value\nthis line is broken sk-other-secret\n")
    dotenv.chmod(0o600)
    config = parse(base).config
    assert config.env["OPENAI_API_KEY"] == "sk-secret-value"
    problems = " ".join(str(p) for p in config.dotenv_problems)
    assert "line 2" in problems
    assert "secret" not in problems


def test_make_service_tree(base):
    service = makeService(parse(base + ["--port", "tcp:0:interface=127.0.0.1"]))
    listener = service.getServiceNamed("listener")
    assert isinstance(listener, StreamServerEndpointService)
    site = listener.factory
    root = site.resource
    assert set(root.children) >= {b"health", b"rpc", b"metrics"}
    assert isinstance(root.children[b"rpc"]._websocket, WebSocketResource)
    # Log redaction is installed with the tree and removed when it stops.
    service.getServiceNamed("redaction").stopService()


def test_agent_version_is_checked_at_start(tmp_path):
    data = ["--data-dir", str(tmp_path / "d")]
    with pytest.raises(usage.UsageError) as old:
        parse(data + ["--pi", OLD_PI])
    message = str(old.value)
    assert "pi 0.73.1" in message
    assert ">= 1.6.0" in message
    assert "scripts/install-pi" in message
    config = parse(data + ["--pi", VERSION_ONLY_PI]).config
    assert config.agent_version.pi == "1.6.0"


def test_an_agent_that_does_not_answer_its_version_stops_the_start(tmp_path):
    broken = tmp_path / "pi"
    broken.write_text("#!/bin/sh\necho 'SyntaxError: no enableCompileCache' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(usage.UsageError) as failed:
        parse(["--data-dir", str(tmp_path / "d"), "--pi", str(broken)])
    assert "--version failed (exit 1)" in str(failed.value)
    assert "enableCompileCache" in str(failed.value)


def test_pi_option_takes_a_command_line(tmp_path):
    config = parse(["--data-dir", str(tmp_path / "d"), "--pi", f"/bin/sh {VERSION_ONLY_PI}"]).config
    assert config.pi_command == ("/bin/sh", VERSION_ONLY_PI)


def test_the_readme_lists_each_option_once():
    """The README's option table is a summary of Options: no option missing or twice."""
    names = [long for long, _short, *_ in Options.optParameters]
    names += [long for long, _short, _doc in Options.optFlags]
    names += [a[4:].replace("_", "-") for a in dir(Options) if a.startswith("opt_")]
    readme = (repository_root() / "README.md").read_text()
    listed = collections.Counter(
        name
        for cell in re.findall(r"^\| (`--[^|]*) \|", readme, re.MULTILINE)
        for name in re.findall(r"`--([a-z0-9-]+)`", cell)
    )
    assert {name: count for name, count in listed.items() if count > 1} == {}
    assert sorted(set(names) - set(listed) - {"help", "version"}) == []
    assert sorted(set(listed) - set(names)) == []
