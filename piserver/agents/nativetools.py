"""
Native tools (tools only a client device can run) and extension dialogs: the pure logic.

A device declares its tools in ``hello.params.nativeTools``; the agent gets them through
the pi extension ``extensions/session.ts``, loaded with :func:`extension_args`. The
extension and this module speak over pi's own extension UI channel. The wire contract
(mirrored at the top of the .ts file; change both together):

1. Declarations: :func:`write_tools_file` replaces ``<path>`` (given to pi as
   ``--native-tools-file=<path>``) atomically with ``[{"name", "description", "parameters"}]``.
   The extension reads it at ``session_start`` and before every run (``before_agent_start``):
   declared tools are registered/updated and active, native tools no longer declared are
   deactivated. So a changed set applies from the next ``prompt`` on, without a restart. A
   missing file means no native tools.

2. A call arrives on pi's stdout as an ``input`` dialog with a marker title::

       {"type": "extension_ui_request", "id": "<uuid>", "method": "input",
        "title": "pi-server:native-tool",
        "placeholder": "{\\"toolCallId\\": \\"call_1_0\\", \\"toolName\\": \\"get_location\\",
                         \\"args\\": {...}}"}

   :func:`parse_tool_call` turns it into a :class:`NativeToolCall` whose ``call_id`` is the
   request's ``id`` (a fresh uuid: the ``callId`` clients see) and ``tool_call_id`` pi's id of
   the tool call (the one in ``tool_execution_*`` events).

3. The answer goes to pi's stdin (:func:`tool_result_response`, :func:`cancelled_response`)::

       {"type": "extension_ui_response", "id": "<uuid>", "value": "{\\"result\\": <JSON>}"}
       {"type": "extension_ui_response", "id": "<uuid>", "value": "{\\"error\\": \\"<text>\\"}"}
       {"type": "extension_ui_response", "id": "<uuid>", "cancelled": true}

   A result becomes the tool's text content (a string as is, anything else as JSON); an
   error or a cancellation fails the tool (``isError``) with a text the model reads.

4. Abort: pi drops the dialog silently when the run is aborted; the tool fails and pi emits
   ``tool_execution_end {"toolCallId": ...}`` before ``agent_end``.
   :func:`ended_tool_call_id` and :meth:`PendingCalls.end_tool_call` find the call that was
   still pending, i.e. cancelled (clients then get ``native_tool_cancel``). Answers pi no
   longer waits for are ignored by pi.

Dialogs of other extensions (``select``, ``confirm``, ``input``, ``editor``) are recognised by
:func:`parse_dialog` and answered from a client's ``extension_ui_response`` params with
:func:`dialog_response`; fire-and-forget requests by :func:`is_notice`. :class:`PendingCalls`
and :class:`PendingDialogs` track what awaits a device: first answer wins, timeouts on the
injected clock, the pending ones listed for a device that attaches later.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import attr
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from piserver.common.errors import InvalidParams
from piserver.common.files import write_json_atomic
from piserver.common.params import check_text

log = Logger()

EXTENSION_PATH = Path(__file__).parent / "extensions" / "session.ts"
"""The pi extension supplying a session's system prompt and native tools (package data)."""

TOOLS_FILE_FLAG = "native-tools-file"
"""The extension's pi flag naming the declarations file."""

SYSTEM_PROMPT_FLAG = "system-prompt-file"
"""The extension's pi flag naming the session's system prompt file."""

CALL_TITLE = "pi-server:native-tool"
"""Title of the ``input`` dialog the extension uses to carry a tool call."""

BUILTIN_TOOL_NAMES = frozenset({"read", "bash", "edit", "write", "grep", "find", "ls"})
"""pi 0.73.1's built-in tools (``allToolNames``); an extension tool of the same name
would replace one."""

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

DEFAULT_CALL_TIMEOUT = 120.0
"""Seconds a native tool call waits for a device before the model gets an error."""

DIALOG_METHODS = frozenset({"select", "confirm", "input", "editor"})
"""Extension UI methods that wait for an ``extension_ui_response``."""

NOTICE_METHODS = frozenset({"notify", "setStatus", "setWidget", "setTitle", "set_editor_text"})
"""Extension UI methods that expect no answer."""


@attr.frozen
class NativeTool:
    """One tool a device declared; ``parameters`` is its JSON Schema (an object schema)."""

    name: str
    description: str
    parameters: dict

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def validate_native_tools(value: object) -> list[NativeTool]:
    """The tools of ``hello.params.nativeTools``, in order.

    Each must be an object with a ``name`` matching ``[A-Za-z0-9_-]{1,64}`` that is neither
    one of pi's built-in tools nor declared twice, a string ``description`` and a JSON Schema
    object ``parameters`` (``"type": "object"`` when a type is given, ``properties`` an
    object when given). Other keys are ignored. Raises :class:`InvalidParams` naming the
    first offending tool.
    """
    if not isinstance(value, list):
        raise InvalidParams("nativeTools must be a list of tools")
    tools: list[NativeTool] = []
    seen: set[str] = set()
    for index, declared in enumerate(value):
        where = f"nativeTools[{index}]"
        if not isinstance(declared, dict):
            raise InvalidParams(f"{where} must be an object with name, description, parameters")
        name = declared.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise InvalidParams(
                f"{where}: tool name {name!r} must be 1-64 letters, digits, '_' or '-'"
            )
        where = f"native tool {name!r}"
        if name in BUILTIN_TOOL_NAMES:
            raise InvalidParams(f"{where} clashes with pi's built-in tool of that name")
        if name in seen:
            raise InvalidParams(f"{where} is declared twice")
        seen.add(name)
        description = declared.get("description")
        if not isinstance(description, str):
            raise InvalidParams(f"{where}: description must be a string")
        check_text(description, f"{where}.description")
        parameters = declared.get("parameters")
        if not isinstance(parameters, dict):
            raise InvalidParams(f"{where}: parameters must be a JSON Schema object")
        if parameters.get("type", "object") != "object":
            raise InvalidParams(f'{where}: parameters must have type "object"')
        if not isinstance(parameters.get("properties", {}), dict):
            raise InvalidParams(f"{where}: parameters.properties must be an object")
        tools.append(NativeTool(name=name, description=description, parameters=parameters))
    return tools


def write_tools_file(path: str | os.PathLike, tools: list[NativeTool]) -> None:
    """Replace the declarations file the extension reads before each run, atomically
    (left alone when it holds them already)."""
    write_json_atomic(path, [tool.to_json() for tool in tools], skip_unchanged=True)


def extension_args(
    system_prompt_file: str | os.PathLike, tools_file: str | os.PathLike | None
) -> list[str]:
    """pi arguments loading the extension with the session's system prompt file and, for a
    session that offers native tools, their declarations file. The ``=`` form keeps a path
    starting with ``-`` or ``@`` from being read as another option."""
    args = ["-e", str(EXTENSION_PATH), f"--{SYSTEM_PROMPT_FLAG}={os.fspath(system_prompt_file)}"]
    if tools_file is not None:
        args.append(f"--{TOOLS_FILE_FLAG}={os.fspath(tools_file)}")
    return args


@attr.frozen
class NativeToolCall:
    """A call of a native tool that waits for a device.

    ``call_id`` is the extension UI request's id (unique; the ``callId`` clients see and
    answer), ``tool_call_id`` pi's id for the tool call, as in ``tool_execution_*`` events.
    """

    call_id: str
    tool_call_id: str
    tool_name: str
    args: dict

    def request_payload(self) -> dict:
        """The payload of the ``native_tool_request`` event for clients."""
        return {"callId": self.call_id, "toolName": self.tool_name, "args": self.args}


def marked_tool_request(event: dict, title: str, what: str, object_field: str):
    """``(request_id, tool_call_id, tool_name, <object_field>)`` of an ``input`` dialog the
    server's extension titled ``title`` to carry a tool call as its JSON placeholder, else
    None. A request with that title but a malformed payload is logged (as ``what``) and
    treated as none: only this project's extension writes these titles."""
    if not (
        event.get("type") == "extension_ui_request"
        and event.get("method") == "input"
        and event.get("title") == title
    ):
        return None
    request_id = event.get("id")
    try:
        payload = json.loads(event["placeholder"])
        fields = (request_id, payload["toolCallId"], payload["toolName"], payload[object_field])
    except (TypeError, ValueError, KeyError):
        fields = None
    if fields is None or not (
        all(isinstance(name, str) and name for name in fields[:3]) and isinstance(fields[3], dict)
    ):
        log.warn("malformed {what} {request_id!r} ignored", what=what, request_id=request_id)
        return None
    return fields


def parse_tool_call(event: dict) -> NativeToolCall | None:
    """The native tool call ``event`` carries, or None when it is anything else (another
    extension's dialog or notice, any other event)."""
    fields = marked_tool_request(event, CALL_TITLE, "native tool request", "args")
    return None if fields is None else NativeToolCall(*fields)


def tool_result_response(
    call: NativeToolCall, result: object = None, error: str | None = None
) -> dict:
    """The ``extension_ui_response`` giving ``call`` its result, or, when ``error`` is a
    string, failing it with that text. ``result`` must be JSON (no NaN or infinity)."""
    answer = {"error": error} if error is not None else {"result": result}
    return {
        "type": "extension_ui_response",
        "id": call.call_id,
        "value": json.dumps(answer, ensure_ascii=False, allow_nan=False),
    }


def cancelled_response(call: NativeToolCall) -> dict:
    """The ``extension_ui_response`` cancelling ``call``: the tool fails ("... was
    cancelled"). Harmless when pi has already dropped the call."""
    return {"type": "extension_ui_response", "id": call.call_id, "cancelled": True}


def unanswered_message(tool_name: str) -> str:
    """The error the model reads when no device answered in time."""
    return f"no connected device answered {tool_name}"


def ended_tool_call_id(event: dict) -> str | None:
    """pi's tool call id when ``event`` is ``tool_execution_end``, else None."""
    if event.get("type") != "tool_execution_end":
        return None
    tool_call_id = event.get("toolCallId")
    return tool_call_id if isinstance(tool_call_id, str) else None


@attr.frozen
class NativeToolAnswer:
    """A client's ``native_tool_response`` params: ``error`` (a message) or ``result``."""

    call_id: str
    result: object = None
    error: str | None = None


def parse_tool_answer(params: object) -> NativeToolAnswer:
    """Validate ``native_tool_response`` params ``{callId, result?, error?: {message}}``:
    at most one of ``result`` and ``error``; neither means a ``null`` result. Raises
    :class:`InvalidParams`."""
    if not isinstance(params, dict):
        raise InvalidParams("native_tool_response params must be an object")
    call_id = params.get("callId")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidParams("native_tool_response needs a callId string")
    if "result" in params and "error" in params:
        raise InvalidParams(f"native_tool_response {call_id}: give result or error, not both")
    if "error" in params:
        error = params["error"]
        if not (isinstance(error, dict) and isinstance(error.get("message"), str)):
            raise InvalidParams(f"native_tool_response {call_id}: error must be {{message}}")
        return NativeToolAnswer(
            call_id=call_id, error=check_text(error["message"], "error.message")
        )
    result = params.get("result")
    try:
        json.dumps(result, allow_nan=False)
    except ValueError:
        raise InvalidParams(f"native_tool_response {call_id}: result is not plain JSON") from None
    return NativeToolAnswer(call_id=call_id, result=result)


@attr.frozen
class ExtensionDialog:
    """An extension's dialog waiting for a person: ``request`` is pi's whole
    ``extension_ui_request`` (what clients get), ``timeout`` pi's own limit in seconds
    (pi answers it by itself then), None when it has none."""

    id: str
    method: str
    request: dict
    timeout: float | None


def parse_dialog(event: dict) -> ExtensionDialog | None:
    """The dialog ``event`` asks for, or None (a native tool call, a notice, anything else)."""
    if event.get("type") != "extension_ui_request" or event.get("method") not in DIALOG_METHODS:
        return None
    if event.get("title") == CALL_TITLE:
        return None
    dialog_id = event.get("id")
    if not isinstance(dialog_id, str):
        return None
    timeout_ms = event.get("timeout")
    timeout = (
        timeout_ms / 1000
        if isinstance(timeout_ms, int | float)
        and not isinstance(timeout_ms, bool)
        and math.isfinite(timeout_ms)
        and timeout_ms > 0
        else None
    )
    return ExtensionDialog(id=dialog_id, method=event["method"], request=event, timeout=timeout)


def is_notice(event: dict) -> bool:
    """Whether ``event`` is a fire-and-forget extension UI request (forwarded, never answered)."""
    return event.get("type") == "extension_ui_request" and event.get("method") in NOTICE_METHODS


def dialog_response(params: object) -> dict:
    """pi's ``extension_ui_response`` for a client's ``extension_ui_response`` params
    ``{id, value: string | confirmed: bool | cancelled: true}`` (exactly one of the three).
    Raises :class:`InvalidParams`."""
    if not isinstance(params, dict):
        raise InvalidParams("extension_ui_response params must be an object")
    dialog_id = params.get("id")
    if not isinstance(dialog_id, str) or not dialog_id:
        raise InvalidParams("extension_ui_response needs an id string")
    given = [key for key in ("value", "confirmed", "cancelled") if key in params]
    if len(given) != 1:
        raise InvalidParams(
            f"extension_ui_response {dialog_id}: give exactly one of value, confirmed, cancelled"
        )
    (key,) = given
    answer = params[key]
    expected = {"value": str, "confirmed": bool, "cancelled": bool}[key]
    if not isinstance(answer, expected) or (key == "cancelled" and answer is not True):
        wanted = {"value": "a string", "confirmed": "a boolean", "cancelled": "true"}[key]
        raise InvalidParams(f"extension_ui_response {dialog_id}: {key} must be {wanted}")
    if key == "value":
        # It goes to pi's stdin: text, as every string param.
        check_text(answer, "value")
    return {"type": "extension_ui_response", "id": dialog_id, key: answer}


@attr.frozen
class _Entry:
    item: object
    timer: IDelayedCall | None


class PendingRequests:
    """Requests awaiting an answer from a device, by id, in arrival order.

    The first :meth:`resolve` (or :meth:`cancel`, or the timeout) takes a request out;
    later ones find nothing. A timeout runs ``on_timeout(item)`` on ``clock``.
    """

    def __init__(self, clock: IReactorTime):
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def _add(
        self,
        key: str,
        item: object,
        timeout: float | None,
        on_timeout: Callable[[object], object] | None,
    ) -> None:
        if key in self._entries:
            raise ValueError(f"{key} is already pending")
        timer = None
        if timeout is not None and on_timeout is not None:
            timer = self._clock.callLater(timeout, self._expire, key, on_timeout)
        self._entries[key] = _Entry(item, timer)

    def _expire(self, key: str, on_timeout: Callable[[object], object]) -> None:
        entry = self._entries.pop(key)
        try:
            on_timeout(entry.item)
        except Exception:
            log.failure("timeout handler for pending request {key} failed", key=key)

    def resolve(self, key: str):
        """Take the request ``key`` out for its answer: the request, or None when it is
        unknown or already answered, cancelled or timed out."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        return entry.item

    def cancel(self, key: str):
        """Drop the request ``key`` without an answer; same return as :meth:`resolve`."""
        return self.resolve(key)

    def cancel_all(self) -> list:
        """Drop every request (e.g. the agent exited); returns them in arrival order."""
        return [self.resolve(key) for key in list(self._entries)]

    def pending(self) -> list:
        """The requests still waiting, in arrival order (to send to a device that attaches)."""
        return [entry.item for entry in self._entries.values()]

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class PendingCalls(PendingRequests):
    """Native tool calls awaiting a device, by ``call_id``; each times out after
    ``timeout`` seconds (then the caller answers pi with :func:`unanswered_message`)."""

    def __init__(self, clock: IReactorTime, timeout: float = DEFAULT_CALL_TIMEOUT):
        super().__init__(clock)
        self.timeout = timeout

    def add(self, call: NativeToolCall, on_timeout: Callable[[NativeToolCall], object]) -> None:
        self._add(call.call_id, call, self.timeout, on_timeout)

    def end_tool_call(self, tool_call_id: str) -> NativeToolCall | None:
        """pi finished the tool call ``tool_call_id`` (``tool_execution_end``): the call if it
        was still pending (pi gave up on it: cancelled), taken out; else None."""
        for call in self.pending():
            if call.tool_call_id == tool_call_id:
                return self.resolve(call.call_id)
        return None


class PendingDialogs(PendingRequests):
    """Extension dialogs awaiting a person, by id. A dialog with its own ``timeout`` is
    dropped when pi answers it by itself; ``on_timeout`` then tells the clients."""

    def add(self, dialog: ExtensionDialog, on_timeout: Callable[[ExtensionDialog], object]) -> None:
        self._add(dialog.id, dialog, dialog.timeout, on_timeout)
