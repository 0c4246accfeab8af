"""
Each session's own pi agent dir, so that one session's settings stay its own.

pi keeps its configuration in one agent dir (``PI_CODING_AGENT_DIR``), and its
RPC commands ``set_model``, ``set_thinking_level``, ``set_steering_mode``,
``set_follow_up_mode``, ``set_auto_compaction`` and ``set_auto_retry`` write
their value into that dir's ``settings.json`` as the default for every later
start. With one shared dir a client changing one session would change every
other session's next restart. So each session's agent runs on
``sessions/<id>/agent/``: a ``settings.json`` of its own (the data dir's, copied
when the session is made) and links to everything else pi reads from the data
dir (``auth.json``, ``models.json``, skills, prompts, extensions…), but never to
the server's own files.
"""

from __future__ import annotations

import os
from pathlib import Path

from piserver.common.files import write_bytes_atomic

SETTINGS = "settings.json"
# The data dir's entries that are the server's, not pi's configuration.
SERVER_ENTRIES = frozenset(
    {
        ".env",
        "server-token",
        "device-tokens.json",
        # The key of signed approval action URLs (security/actionurls.py).
        "approval-url.key",
        "state.json",
        "repos.json",
        # Usage and budgets (sessions/usage.py), request keys (wire/idempotency.py), the audit
        # log and its rotations (ops/audit.py), session files being imported (sessions/imports.py).
        "usage.json",
        "idempotency-keys.log",
        "audit.log",
        "imports",
        "sessions",
        "models-helper",
        "node-compile-cache",
        # Web Push's key pair and the devices' subscriptions (security/vapid.py,
        # security/pushsubscriptions.py): an agent must never sign or read pushes.
        "vapid-private-key.pem",
        "push-subscriptions.json",
        SETTINGS,
    }
)


def _is_server_entry(name: str) -> bool:
    # state.json.corrupt-1, server-token.tmp…: set-asides and temporaries are the server's too.
    return name in SERVER_ENTRIES or any(name.startswith(f"{entry}.") for entry in SERVER_ENTRIES)


def shared_paths(data_dir: Path) -> list[Path]:
    """The data dir's entries an agent dir links to: pi's files, none of the server's."""
    return [entry for entry in data_dir.iterdir() if not _is_server_entry(entry.name)]


def prepare(data_dir: Path, session_agent_dir: Path) -> None:
    """Make or refresh ``session_agent_dir``: links to pi's files in ``data_dir`` (new ones
    appear, removed ones go), and the first time a copy of its ``settings.json``."""
    session_agent_dir.mkdir(mode=0o700, exist_ok=True)
    settings = session_agent_dir / SETTINGS
    shared_settings = data_dir / SETTINGS
    # The agent writes this dir: a settings.json it made a link (or removed) gets a fresh
    # copy, written to a new temporary file (never through a link it planted) and renamed.
    if (settings.is_symlink() or not settings.exists()) and shared_settings.is_file():
        write_bytes_atomic(settings, shared_settings.read_bytes())
    wanted = {entry.name for entry in shared_paths(data_dir)}
    for entry in session_agent_dir.iterdir():
        if entry.is_symlink() and entry.name not in wanted:
            entry.unlink()
    for name in wanted:
        link = session_agent_dir / name
        target = data_dir / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            # pi replaced a link by a file of its own (an atomic rewrite): keep pi's file.
            continue
        link.symlink_to(target)


# What pi reads from its agent dir at start (pi's docs/configuration.md, "Agent
# directory"): a change to anything else in the data dir (a log file, a user's
# notes) does not make a started agent stale.
PI_CONFIGURATION_FILES = (
    SETTINGS,
    "keybindings.json",
    "mcp.json",
    "mcp-auth.json",
    "models.json",
    "auth.json",
    "AGENTS.override.md",
    "AGENTS.md",
    "AGENTS.MD",
    "CLAUDE.md",
    "CLAUDE.MD",
    "SYSTEM.md",
    "APPEND_SYSTEM.md",
)
PI_CONFIGURATION_DIRS = ("extensions", "skills", "prompts", "themes")
# A fingerprint must stay cheap (it is taken at every create): a tree larger than
# this is seen by its first entries only.
_MAX_FINGERPRINT_ENTRIES = 2000


def fingerprint(data_dir: Path) -> frozenset:
    """What pi reads at start from the data dir, as names, sizes and times: an agent
    started before it changed (a warm agent) no longer behaves as a new one would."""
    seen = set()
    for name in PI_CONFIGURATION_FILES:
        try:
            status = (data_dir / name).stat()
        except OSError:
            continue
        seen.add((name, status.st_mtime_ns, status.st_size))
    for name in PI_CONFIGURATION_DIRS:
        top = data_dir / name
        if not top.is_dir():
            continue
        count = 0
        for directory, dirs, files in os.walk(top, followlinks=True):
            dirs.sort()
            for entry in [*dirs, *sorted(files)]:
                path = os.path.join(directory, entry)
                try:
                    status = os.stat(path)
                except OSError:
                    continue
                seen.add((os.path.relpath(path, data_dir), status.st_mtime_ns, status.st_size))
                count += 1
            seen.add((os.path.relpath(directory, data_dir), "dir"))
            if count > _MAX_FINGERPRINT_ENTRIES:
                break
    return frozenset(seen)
