"""
pi's RPC commands as wire methods: each under pi's own name, its params checked
before pi sees them.

The seed named agent calls after pi's commands (``get_state``, ``set_model``),
with the session in the envelope; every pi 1.6 command is reachable that way.
Commands whose fields are known are typed here (and documented in
docs/protocol.md); a command name the server does not know is passed to the
session's pi unchanged, so a command pi adds later works at once. Commands that
would change which conversation a server session is bound to, or where pi
writes files, are the server's own (see ``methods.py``) and never pass through.
"""

from __future__ import annotations

import attr

from piserver.api import params as check
from piserver.common.errors import InvalidParams

# Commands that run the model or a shell: they answer when done.
LONG_COMMAND_TIMEOUT = 600.0
THINKING_LEVELS = ("off", "minimal", "low", "medium", "high", "xhigh", "max")
QUEUE_MODES = ("all", "one-at-a-time")
# pi commands the server implements itself (or refuses): never passed through as they are.
SERVER_OWNED = frozenset(
    {
        "prompt",
        "abort",
        "get_state",
        "get_messages",
        "get_available_models",
        "set_model",
        "cycle_model",
        "new_session",
        "switch_session",
        "fork",
        "clone",
        "export_html",
        "extension_ui_response",
        "set_session_name",
    }
)


@attr.frozen
class Field:
    """One param: ``kind`` is ``string`` (text), ``text`` (non-empty text), ``boolean``,
    ``choice`` (one of ``choices``) or ``images`` (a list of pi image objects); checked
    with piserver.api.params."""

    name: str
    kind: str
    required: bool = False
    choices: tuple = ()

    def check(self, params: dict):
        if params.get(self.name) is None:
            if self.required:
                raise InvalidParams(f'missing "{self.name}"')
            return None
        if self.kind in ("string", "text"):
            return check.text(params, self.name, nonempty=self.kind == "text")
        if self.kind == "boolean":
            return check.boolean(params, self.name)
        if self.kind == "choice":
            return check.choice(params, self.name, self.choices)
        if self.kind == "images":
            return check.images(params, self.name)
        raise AssertionError(f"unknown kind {self.kind!r}")


@attr.frozen
class PiCommand:
    """A pi command: its fields and how long pi may take (None: the usual timeout). The
    settings commands need nothing more: pi keeps what they set in the session's own
    settings.json (see agentdir), so a restarted agent has it again."""

    name: str
    fields: tuple[Field, ...] = ()
    timeout: float | None = None

    def fields_from(self, params: dict) -> dict:
        checked = {}
        for field in self.fields:
            value = field.check(params)
            if value is not None:
                checked[field.name] = value
        return checked


def _message_fields() -> tuple[Field, ...]:
    return (Field("message", "text", required=True), Field("images", "images"))


TYPED = {
    command.name: command
    for command in (
        PiCommand("steer", _message_fields()),
        PiCommand("follow_up", _message_fields()),
        PiCommand("clear_queue"),
        PiCommand(
            "compact", (Field("customInstructions", "string"),), timeout=LONG_COMMAND_TIMEOUT
        ),
        PiCommand("set_auto_compaction", (Field("enabled", "boolean", required=True),)),
        PiCommand("set_auto_retry", (Field("enabled", "boolean", required=True),)),
        PiCommand("abort_retry"),
        PiCommand(
            "set_thinking_level",
            (Field("level", "choice", required=True, choices=THINKING_LEVELS),),
        ),
        PiCommand("cycle_thinking_level"),
        PiCommand("get_available_thinking_levels"),
        PiCommand(
            "set_steering_mode", (Field("mode", "choice", required=True, choices=QUEUE_MODES),)
        ),
        PiCommand(
            "set_follow_up_mode", (Field("mode", "choice", required=True, choices=QUEUE_MODES),)
        ),
        PiCommand("get_session_stats"),
        PiCommand("get_commands"),
        PiCommand("get_last_assistant_text"),
        PiCommand("get_fork_messages"),
        PiCommand("get_entries", (Field("since", "string"),)),
        PiCommand("get_tree"),
        PiCommand(
            "bash",
            (Field("command", "text", required=True), Field("excludeFromContext", "boolean")),
            timeout=LONG_COMMAND_TIMEOUT,
        ),
        PiCommand("abort_bash"),
    )
}


def passthrough_fields(params: dict) -> dict:
    """An unknown command's params as pi gets them: without the keys the server sets
    (``id``, ``type``; clients of the seed repeat ``type`` in params)."""
    return {key: value for key, value in params.items() if key not in ("id", "type", "sessionId")}
