"""
``pi-server token add NAME [--scope LIST] [--repo ID]... [--own-sessions] | list |
revoke NAME``: the device tokens in the data dir, with what each may do (see
security/scopes.py). ``add`` prints the new token once, on stdout alone (so that
``TOKEN=$(pi-server token add phone)`` works); nothing ever prints a stored hash.
``add NAME --qr`` prints after it the URL to connect with and that URL as a QR code
(segno), for a phone camera to pick up; ``--qr --web`` the web client's sign-in link
(``…/ui#token=…``) instead, for a phone's browser. A running server sees every change within a
second (see devices.py).
"""

import socket
from pathlib import Path
from urllib.parse import quote, urlsplit

import segno
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python import usage

from piserver.common.defaults import DEFAULT_PORT
from piserver.config import DATA_DIR_OPTION, default_data_dir, options_first, prepare_data_dir
from piserver.security.scopes import DEFAULT_SCOPES, parse_scopes, scope_list
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore, TokenError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SYNOPSIS = (
    "Usage: pi-server token [--data-dir DIR] add NAME [--scope LIST] [--repo ID]... "
    "[--own-sessions] [--qr [--web] [--url URL]] | list | revoke NAME"
)


def connect_url(server_url: str, token: str) -> str:
    """The /rpc URL carrying ``token``, from the server's address as a device reaches it
    (``ws://host:3141``; an ``http(s)`` URL becomes ``ws(s)``)."""
    parts = urlsplit(server_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname or parts.query or parts.fragment:
        raise usage.UsageError(f"--url {server_url!r}: give ws://HOST:PORT or wss://HOST:PORT")
    path = parts.path.rstrip("/")
    if not path.endswith("/rpc"):
        path += "/rpc"
    return f"{scheme}://{parts.netloc}{path}?token={quote(token, safe='')}"


def web_url(server_url: str, token: str) -> str:
    """The web client's sign-in link carrying ``token`` in its fragment (which a browser
    never sends to a server), from the same server address as ``connect_url``."""
    rpc = urlsplit(connect_url(server_url, token))
    scheme = {"ws": "http", "wss": "https"}[rpc.scheme]
    base = rpc.path.removesuffix("/rpc")
    return f"{scheme}://{rpc.netloc}{base}/ui#token={quote(token, safe='')}"


def default_server_url(environ) -> str:
    return f"ws://{socket.gethostname()}:{environ.get('PI_SERVER_PORT') or DEFAULT_PORT}"


def write_qr(text: str, out) -> None:
    # Half blocks: two rows of modules a line, readable by a phone camera off a terminal.
    segno.make(text, error="m").terminal(out=out, compact=True)


class AddOptions(usage.Options):
    synopsis = "NAME [--scope LIST] [--repo ID]... [--own-sessions] [--qr [--web] [--url URL]]"
    optFlags = [
        ["qr", None, "also print the URL to connect with, and it as a QR code for a phone"],
        ["web", None, "with --qr: the web client's sign-in link (/ui#token=...) instead"],
        ["own-sessions", None, "it sees and acts on only the sessions it creates"],
    ]
    optParameters = [
        [
            "url",
            None,
            None,
            "the server as the device reaches it, for --qr [default: ws://<this host's name>:"
            f"<$PI_SERVER_PORT or {DEFAULT_PORT}>]",
        ],
    ]

    def parseOptions(self, options=None):
        # ``add phone --qr`` as well as ``add --qr phone``: getopt stops at the name.
        names, flags = [], []
        args = list(options or [])
        while args:
            arg = args.pop(0)
            if arg in ("--url", "--scope", "--repo") and args:
                flags += [arg, args.pop(0)]
            elif arg.startswith("-"):
                flags.append(arg)
            else:
                names.append(arg)
        super().parseOptions(flags + names)

    def __init__(self):
        super().__init__()
        self["scopes"] = DEFAULT_SCOPES
        self["repos"] = None

    def opt_scope(self, text):
        """what it may do, a comma list of read, prompt, approve, ship, manage [default: all]"""
        try:
            self["scopes"] = parse_scopes(text)
        except ValueError as e:
            raise usage.UsageError(f"--scope: {e}") from None

    def opt_repo(self, repo_id):
        """only sessions of this repository (repeatable) [default: every repository]"""
        if not repo_id.strip():
            raise usage.UsageError("--repo: give a repository id (see repos.list)")
        self["repos"] = (self["repos"] or frozenset()) | {repo_id.strip()}

    def parseArgs(self, name):
        self["name"] = name

    def postOptions(self):
        if self["url"] is not None:
            if not self["qr"]:
                raise usage.UsageError("--url goes with --qr")
            connect_url(self["url"], "check")
        if self["web"] and not self["qr"]:
            raise usage.UsageError("--web goes with --qr")


class ListOptions(usage.Options):
    synopsis = ""


class RevokeOptions(usage.Options):
    synopsis = "NAME"

    def parseArgs(self, name):
        self["name"] = name


class TokenOptions(usage.Options):
    synopsis = SYNOPSIS
    longdesc = (
        "Named tokens that open /rpc besides the server token, stored hashed in "
        "<data-dir>/device-tokens.json. Revoking one closes that device's connections."
    )
    optParameters = [list(DATA_DIR_OPTION)]
    subCommands = [
        ["add", None, AddOptions, "create a token for device NAME and print it (once)"],
        ["list", None, ListOptions, "list the devices that have a token, with creation times"],
        [
            "revoke",
            None,
            RevokeOptions,
            "remove the token of device NAME; a running server closes its connections",
        ],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("give a command: add NAME, list or revoke NAME")

    def data_dir(self, environ) -> Path:
        chosen = self["data-dir"]
        return (Path(chosen).expanduser() if chosen else default_data_dir(environ)).absolute()


def run(argv, environ, clock, stdout, stderr) -> int:
    """Run ``pi-server token ARGV``; return the exit status."""
    options = TokenOptions()
    try:
        options.parseOptions(options_first(list(argv), "--data-dir"))
    except usage.UsageError as e:
        stderr.write(f"pi-server token: {e}\n{SYNOPSIS}\n")
        return EXIT_USAGE
    data_dir = options.data_dir(environ)
    command = options.subCommand
    if command == "add":
        try:
            prepare_data_dir(data_dir)
        except OSError as e:
            stderr.write(f"pi-server token: data dir {data_dir} is not usable: {e.strerror or e}\n")
            return EXIT_FAILED
    store = DeviceTokenStore(data_dir / DEVICE_TOKENS_FILE, clock, log=_stderr_logger(stderr))
    name = options.subOptions.get("name")
    try:
        if command == "add":
            token = store.add(
                name,
                options.subOptions["scopes"],
                options.subOptions["repos"],
                options.subOptions["own-sessions"],
            )
            stdout.write(token + "\n")
            stderr.write(
                f"added device {name}. The token above is shown only this once: give it to the "
                "device (Authorization: Bearer <token>, or ?token=<token> on the /rpc URL).\n"
            )
            if options.subOptions["qr"]:
                link = web_url if options.subOptions["web"] else connect_url
                url = link(options.subOptions["url"] or default_server_url(environ), token)
                stdout.write(url + "\n")
                write_qr(url, stdout)
        elif command == "list":
            devices = store.list()
            if not devices:
                stderr.write(f"no device tokens in {data_dir}\n")
            width = max((len(device["name"]) for device in devices), default=0)
            for device in devices:
                stdout.write(
                    f"{device['name']:<{width}}  {device['createdAt'] or '-'}  "
                    f"{describe_grant(device['grant'])}\n"
                )
        elif not store.revoke(name):
            stderr.write(f"pi-server token: there is no device named {name!r}\n")
            return EXIT_FAILED
        else:
            stderr.write(
                f"revoked the token of device {name}; a running server closes its "
                "connections within a second\n"
            )
    except TokenError as e:
        stderr.write(f"pi-server token {command}: {e}\n")
        return EXIT_FAILED
    except OSError as e:
        stderr.write(f"pi-server token {command}: {e.filename or data_dir}: {e.strerror or e}\n")
        return EXIT_FAILED
    return EXIT_OK


def describe_grant(grant) -> str:
    """``read,prompt  repos: a, b  own sessions`` for ``token list``."""
    text = ",".join(scope_list(grant.scopes)) or "no scopes"
    if grant.repos is not None:
        text += "  repos: " + (", ".join(sorted(grant.repos)) or "none")
    if grant.own_sessions:
        text += "  own sessions"
    return text


def _stderr_logger(stderr) -> Logger:
    """The store's warnings (loose file modes, a corrupt file moved aside) for the user."""

    def observer(event):
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            stderr.write(f"pi-server token: {formatEvent(event)}\n")

    return Logger(observer=observer)
