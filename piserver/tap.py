"""
``twistd piserver``: command-line options and the service tree.
"""

import os
from pathlib import Path

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.logger import Logger
from twisted.python import usage

from .config import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_PORT,
    PI_PACKAGE,
    ServerConfig,
    default_data_dir,
    find_pi,
    prepare_data_dir,
)
from .dotenv import load_dotenv
from .github import DEFAULT_API_URL as DEFAULT_GITHUB_API_URL
from .tokens import TokenError, load_or_create_server_token

log = Logger()


def endpoint_description(port: str, host: str) -> str:
    """A port number becomes a TCP endpoint on ``host``; anything else is an endpoint string."""
    if port.isdigit():
        number = int(port)
        # 0 (any free port) is allowed: tests and scripts use it.
        if number > 65535:
            raise usage.UsageError(f"--port {port}: a port number is 1-65535") from None
        return f"tcp:{number}:interface={quoteStringArgument(host)}"
    if ":" not in port:
        raise usage.UsageError(
            f"--port {port!r}: give a port number or an endpoint such as tcp:3141 or unix:/path"
        )
    return port


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serves /rpc (WebSocket), / and /health on one port and drives "
        "`pi --mode rpc` agent processes for its clients."
    )
    optParameters = [
        ["port", "p", None,
         f"port number or Twisted endpoint string [default: $PI_SERVER_PORT or {DEFAULT_PORT}]"],
        ["host", None, "0.0.0.0", "interface to listen on when --port is a number"],
        ["data-dir", None, None,
         "data directory [default: $PI_SERVER_DATA_DIR, $XDG_DATA_HOME/pi-server or "
         "~/.local/share/pi-server]"],
        ["pi", None, None,
         "the pi agent command [default: $PI_SERVER_PI, pi on PATH, or the project's "
         "node_modules/.bin/pi]"],
        ["auth-token", None, None,
         "token clients must present [default: $PI_SERVER_AUTH_TOKEN or <data-dir>/server-token]"],
        ["max-frame-size", None, DEFAULT_MAX_FRAME_SIZE,
         "largest WebSocket frame accepted, in bytes", int],
        ["clone-timeout", None, 300.0,
         "seconds a git clone may take before it is stopped", float],
        ["github-timeout", None, 30.0,
         "seconds to wait for each GitHub API answer", float],
        ["github-api-url", None, None,
         f"GitHub API base URL, for GitHub Enterprise [default: $PI_SERVER_GITHUB_API_URL or "
         f"{DEFAULT_GITHUB_API_URL}]"],
    ]
    optFlags = [
        ["no-auth", None, "accept /rpc connections without a token (unsafe)"],
    ]

    def __init__(self, environ=None):
        super().__init__()
        self.environ = dict(os.environ if environ is None else environ)

    def postOptions(self):
        environ = self.environ
        port = self["port"] or environ.get("PI_SERVER_PORT") or str(DEFAULT_PORT)
        endpoint = endpoint_description(port, self["host"])
        for name in ("clone-timeout", "github-timeout"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        if self["max-frame-size"] < 1024:
            raise usage.UsageError("--max-frame-size must be at least 1024 bytes")

        data_dir = (
            Path(self["data-dir"]).expanduser() if self["data-dir"]
            else default_data_dir(environ)
        ).absolute()
        try:
            prepare_data_dir(data_dir)
        except OSError as e:
            raise usage.UsageError(f"data dir {data_dir} is not usable: {e.strerror or e}") \
                from None

        pi = find_pi(self["pi"], environ)
        if pi is None:
            raise usage.UsageError(
                "the pi agent was not found. Install it with scripts/install-pi (project-local) "
                f"or `npm install -g {PI_PACKAGE}`, or name it with --pi or $PI_SERVER_PI"
            )

        try:
            dotenv, problems = load_dotenv(data_dir / ".env")
        except OSError as e:
            raise usage.UsageError(f"cannot read {data_dir / '.env'}: {e.strerror or e}") from None
        env = {**environ, **dotenv}

        if self["no-auth"]:
            token, source = None, "disabled"
        else:
            explicit = self["auth-token"] or environ.get("PI_SERVER_AUTH_TOKEN")
            try:
                token, source = load_or_create_server_token(data_dir, explicit)
            except (OSError, TokenError) as e:
                raise usage.UsageError(f"cannot read or store the server token: {e}") from None

        github_api_url = (self["github-api-url"] or environ.get("PI_SERVER_GITHUB_API_URL")
                          or DEFAULT_GITHUB_API_URL).rstrip("/")
        if not github_api_url.startswith(("http://", "https://")):
            raise usage.UsageError(f"--github-api-url {github_api_url!r}: not an http(s) URL")

        try:
            serverFromString(_reactor(), endpoint)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise usage.UsageError(f"--port {port!r}: {e}") from None

        self.config = ServerConfig(
            endpoint=endpoint,
            data_dir=data_dir,
            pi_command=pi,
            auth_token=token,
            auth_token_source=source,
            max_frame_size=self["max-frame-size"],
            github_api_url=github_api_url,
            clone_timeout=self["clone-timeout"],
            github_timeout=self["github-timeout"],
            dotenv_names=frozenset(dotenv),
            env=env,
            dotenv_problems=tuple(problems),
        )


def _reactor():
    from twisted.internet import reactor
    return reactor


def makeService(options: Options):
    from .server import build_service
    return build_service(options.config, _reactor())
