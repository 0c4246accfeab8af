"""
The permission gate's wire contract with the server's pi extension
(``extensions/session.ts``, points 5; change both together).

The extension reads ``--permission-file=<path>`` (:func:`write_mode_file`) at every
``tool_call``: in ``full`` mode the call runs at once; otherwise (or when the file cannot
be read: fail closed) it asks the server over
pi's extension UI channel with an ``input`` dialog titled :data:`GATE_TITLE` whose
placeholder is ``{"toolCallId", "toolName", "input"}`` (:func:`parse_gated_call`). The
server answers with :func:`allow_response` or :func:`block_response`; anything else blocks.
"""

from __future__ import annotations

import json
import os

import attr
from twisted.logger import Logger

from piserver.agents.nativetools import marked_tool_request
from piserver.common.files import write_json_atomic

log = Logger()

PERMISSION_FILE_FLAG = "permission-file"
"""The extension's pi flag naming the session's permission file."""

GATE_TITLE = "pi-server:approval"
"""Title of the ``input`` dialog carrying a gated tool call."""


def permission_args(path: str | os.PathLike) -> list[str]:
    """pi arguments naming the permission file (the ``=`` form: a path is never an option)."""
    return [f"--{PERMISSION_FILE_FLAG}={os.fspath(path)}"]


def write_mode_file(path: str | os.PathLike, mode: str) -> None:
    """Replace the file the extension reads at every tool call, atomically. It is mode
    0644 inside a directory the sandbox mounts read-only: the agent reads, never writes.
    Left alone when it says so already (a warm agent's, handed to a create)."""
    write_json_atomic(path, {"mode": mode}, mode=0o644, skip_unchanged=True)


@attr.frozen
class GatedCall:
    """A tool call waiting for the server's decision: ``request_id`` is the dialog's id
    (what the answer names), ``tool_call_id`` pi's id of the call."""

    request_id: str
    tool_call_id: str
    tool_name: str
    input: dict


def parse_gated_call(event: dict) -> GatedCall | None:
    """The gated call ``event`` carries, or None for anything else (a malformed one is
    logged and ignored: the call then waits until the run is aborted)."""
    fields = marked_tool_request(event, GATE_TITLE, "approval request", "input")
    return None if fields is None else GatedCall(*fields)


def allow_response(request_id: str) -> dict:
    """pi's ``extension_ui_response`` letting the gated call run."""
    return {"type": "extension_ui_response", "id": request_id, "value": '{"allow": true}'}


def block_response(request_id: str, reason: str) -> dict:
    """pi's ``extension_ui_response`` blocking the gated call; the model reads ``reason``."""
    return {
        "type": "extension_ui_response",
        "id": request_id,
        "value": json.dumps({"block": reason}, ensure_ascii=False),
    }
