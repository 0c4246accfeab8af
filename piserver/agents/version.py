"""
Which pi (and which Node.js) the server drives, checked once at start.

pi 1.x changed its events (delta-only ``message_update``, ``agent_settled``) and
needs Node.js >= 22.19; an older or newer major version than the server knows
would half work, so the start stops with a message saying what was found and
how to install the pinned version instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import attr

from piserver.common.processes import run_probe

PI_PACKAGE = "@earendil-works/pi-coding-agent"
# The oldest version whose RPC protocol the server is built and tested on, and the first
# major version it does not know.
MIN_VERSION = (1, 6, 0)
MAX_VERSION_EXCLUSIVE = (2, 0, 0)
MIN_NODE = (22, 19, 0)
PROBE_TIMEOUT = 30.0
INSTALL_HINT = (
    f"run scripts/install-pi (installs the pinned {PI_PACKAGE} and a Node.js 22 into this "
    f"checkout's node_modules/), or `npm install -g {PI_PACKAGE}@1` with Node.js >= 22.19, "
    "and name it with --pi or $PI_SERVER_PI"
)
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


class UnsupportedAgent(Exception):
    """The pi found cannot be used: its message says what was found and what to do."""


@attr.frozen
class AgentVersion:
    """``pi`` is pi's version (``"1.6.0"``); ``node`` the Node.js running it, or None when
    it cannot be told (a ``pi`` whose interpreter is not a plain ``node``)."""

    pi: str
    node: str | None

    def public(self) -> dict:
        return {"name": "pi", "package": PI_PACKAGE, "version": self.pi, "node": self.node}


def _parse(text: str) -> tuple[int, int, int] | None:
    match = _VERSION.search(text)
    return tuple(int(part) for part in match.groups()) if match else None


def _dotted(version: tuple) -> str:
    return ".".join(str(part) for part in version)


def _run(argv: list[str], env) -> subprocess.CompletedProcess:
    return run_probe(argv, env, PROBE_TIMEOUT)


def node_of(command: tuple[str, ...], env) -> str | None:
    """The Node.js binary that runs ``command``: its first word when it is ``node …``, else
    the interpreter its script's ``#!`` line names (``/usr/bin/env node`` is looked up on
    the PATH of ``env``)."""
    if len(command) > 1:
        return command[0] if os.path.basename(command[0]).startswith("node") else None
    try:
        with open(command[0], "rb") as script:
            first = script.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    if not words or not os.path.basename(words[0]).startswith("node"):
        return None
    return shutil.which(words[0], path=env.get("PATH", os.defpath)) or None


def probe(command: tuple[str, ...], env) -> AgentVersion:
    """Run ``pi --version`` (and ``node --version``); raise UnsupportedAgent unless the
    version is one this server supports."""
    shown = " ".join(command)
    node = node_of(command, env)
    node_version = None
    if node is not None:
        try:
            node_version = _parse(_run([node, "--version"], env).stdout.decode("ascii", "replace"))
        except (OSError, subprocess.TimeoutExpired):
            node_version = None
    try:
        answer = _run([*command, "--version"], env)
    except subprocess.TimeoutExpired:
        raise UnsupportedAgent(
            f"{shown} --version did not answer within {PROBE_TIMEOUT:g} s"
        ) from None
    except OSError as e:
        raise UnsupportedAgent(f"{shown} cannot be run: {e.strerror or e}") from None
    output = answer.stdout.decode("utf-8", "replace").strip()
    version = _parse(output) if answer.returncode == 0 else None
    if version is None:
        error = answer.stderr.decode("utf-8", "replace").strip()[-600:]
        reason = f"{shown} --version failed (exit {answer.returncode}): {error or output!r}"
        if node_version is not None and node_version < MIN_NODE:
            reason += (
                f". It runs on Node.js {_dotted(node_version)}; pi 1.x needs "
                f"Node.js >= {_dotted(MIN_NODE)}"
            )
        raise UnsupportedAgent(f"{reason}. To use the supported pi: {INSTALL_HINT}")
    if not MIN_VERSION <= version < MAX_VERSION_EXCLUSIVE:
        raise UnsupportedAgent(
            f"{shown} is pi {_dotted(version)}; pi-server supports pi "
            f">= {_dotted(MIN_VERSION)} and < {_dotted(MAX_VERSION_EXCLUSIVE)} "
            f"({PI_PACKAGE}). To use it: {INSTALL_HINT}"
        )
    return AgentVersion(
        pi=_dotted(version), node=_dotted(node_version) if node_version is not None else None
    )
