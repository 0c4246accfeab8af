"""
pi's project trust, as the server decides it (``--project-trust``).

pi 1.6 loads a working folder's own configuration (``.pi/settings.json``, ``.pi/mcp.json``,
``.pi/extensions|skills|prompts|themes``, ``.pi/SYSTEM.md|APPEND_SYSTEM.md``, ``.agents/skills``
here or above) only when the project is trusted: project extensions are code that runs in
the agent at start, before any prompt and outside the permission gate. In RPC mode pi cannot
ask anyone: an extension's ``project_trust`` handler gets a context without UI (its dialogs
answer ``undefined``/``false`` at once, nothing reaches stdout), and with no decision pi
falls back to ``defaultProjectTrust`` and ``trust.json`` in the agent dir, which the agent
can write. So the server decides, outside pi, and starts every agent with pi's one-time
override, ``--approve`` or ``--no-approve``: it comes first in pi's order, nothing is saved,
and nothing the agent writes changes it.

:func:`trust_resources` mirrors pi's ``hasTrustRequiringProjectResources`` (its
``core/trust-manager.js``): what a folder has that makes pi ask. It only looks at names
(``lstat``): nothing of the agent's files is read or followed by the server.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

from piserver.agents.nativetools import ExtensionDialog

PROJECT_CONFIG_RESOURCES = (
    "settings.json",
    "mcp.json",
    "extensions",
    "skills",
    "prompts",
    "themes",
    "SYSTEM.md",
    "APPEND_SYSTEM.md",
)
"""Entries of a folder's ``.pi`` that need trust (a bare ``.pi`` does not)."""

DEFAULT_PROJECT_TRUST_TIMEOUT = 300.0
"""Seconds the question stays on offer to the session's clients."""

TRUST_TITLE = "Trust this project's pi configuration?"


class TrustPolicy(enum.StrEnum):
    """``--project-trust``: what the server does when a session's folder has pi
    configuration of its own."""

    ASK = "ask"  # ask the session's clients; until a person says yes, never
    ALWAYS = "always"  # load it without asking
    NEVER = "never"  # never load it, never ask


def trust_resources(cwd: str | os.PathLike, home: str | None = None) -> tuple[str, ...]:
    """What of ``cwd`` makes pi ask for project trust, as paths relative to ``cwd``
    (``.pi/extensions``, ``../.agents/skills``...); empty when nothing does. ``home``'s own
    ``.agents/skills`` is the user's, not a project's (as for pi)."""
    folder = Path(os.path.abspath(cwd))
    found = [
        f".pi/{entry}"
        for entry in PROJECT_CONFIG_RESOURCES
        if os.path.lexists(folder / ".pi" / entry)
    ]
    home = os.path.abspath(home if home is not None else os.path.expanduser("~"))
    user_skills = os.path.join(home, ".agents", "skills")
    for depth, directory in enumerate([folder, *folder.parents]):
        skills = directory / ".agents" / "skills"
        if str(skills) != user_skills and os.path.lexists(skills):
            found.append("../" * depth + ".agents/skills")
    return tuple(found)


def trust_args(trusted: bool) -> list[str]:
    """pi's one-time override: load the project's configuration or skip it."""
    return ["--approve"] if trusted else ["--no-approve"]


def trust_dialog(
    dialog_id: str, cwd: str, found: tuple[str, ...], timeout: float
) -> ExtensionDialog:
    """The question as an extension ``confirm`` dialog, the way clients already show pi's."""
    listed = ", ".join(found)
    request = {
        "type": "extension_ui_request",
        "id": dialog_id,
        "method": "confirm",
        "title": TRUST_TITLE,
        "message": (
            f"The session's folder {cwd} has pi configuration of its own ({listed}). "
            "Trusting it lets pi load it: its extensions run as code in the agent (inside "
            "the sandbox) when the agent starts, before any prompt and without asking. "
            "Not trusting it (what happens if nobody answers) skips all of it."
        ),
        "timeout": int(timeout * 1000),
    }
    return ExtensionDialog(id=dialog_id, method="confirm", request=request, timeout=timeout)
