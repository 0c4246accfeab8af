"""
The seed's iOS client, emulated: its exact frames, and every answer decoded as
strictly as its Codable types decode it (``../shared/reference/pi-rpc-and-clients.md``
§4). A decode the app would fail raises :class:`DecodeFailure`, so a compatibility
test fails where the phone would.

What the app does, and so what this does:

- every request is a **binary** frame; the envelope's ``sessionId`` is its *current*
  session, on every request; ``session.attach``/``session.delete`` name their target in
  ``params.sessionId``; agent calls send its command structs as params, ``type`` included;
  ``session.detach`` has no params at all;
- ``hello`` first; on reconnect with ``resume {connectionId, lastSeqBySession}`` and no
  ``nativeTools``; it never prunes ``lastSeqBySession``;
- a success counts only when ``result`` is an object; a frame over 1 MiB drops the socket
  (URLSession's default);
- events: ``seq`` an unsigned 64-bit number; unknown types ignored; ``message_update`` read
  from ``assistantMessageEvent`` (``type``, ``delta``, ``contentIndex``), and a
  ``toolcall_start``'s tool id and name from ``partial.content[contentIndex]``;
  ``tool_execution_update``/``_end`` from ``output`` (String) and ``status``; ``agent_end``
  from ``success`` (Bool) and ``error {code, message}``;
- ``capabilities.replayWindowSec`` is an integer; ``get_messages`` knows the roles and
  content blocks below and nothing else.
"""

from __future__ import annotations

import json
import uuid

from tests.support.wsclient import RpcClient

MAX_MESSAGE_BYTES = 1024 * 1024
ROLES = ("user", "assistant", "system", "tool", "toolResult")
BLOCKS = ("text", "thinking", "tool_use", "toolCall", "tool_result")
TOOL_STATUSES = ("success", "error", "cancelled")


class DecodeFailure(AssertionError):
    """The app's decoder would reject this frame."""


def _require(condition: bool, what: str, value) -> None:
    if not condition:
        raise DecodeFailure(f"{what}: {json.dumps(value)[:400]}")


def _string(container: dict, key: str, where: str) -> str:
    value = container.get(key) if isinstance(container, dict) else None
    _require(isinstance(value, str), f"{where}.{key} is not a String", container)
    return value


def _int(value, what: str) -> int:
    _require(type(value) is int, f"{what} is not an integer", value)
    return value


def decode_event(frame: dict) -> dict:
    """Check an event as the app reads it (types it does not know it ignores)."""
    _string(frame, "sessionId", "event")
    seq = _int(frame.get("seq"), "event.seq")
    _require(0 <= seq < 2**64, "event.seq is not a UInt64", frame)
    event_type = _string(frame, "type", "event")
    payload = frame.get("payload")
    _require(isinstance(payload, dict), "event.payload is not an object", frame)
    if event_type == "message_update":
        update = payload.get("assistantMessageEvent")
        _require(isinstance(update, dict), "assistantMessageEvent missing", payload)
        kind = _string(update, "type", "assistantMessageEvent")
        if "delta" in update:
            _string(update, "delta", "assistantMessageEvent")
        if "contentIndex" in update:
            _int(update["contentIndex"], "assistantMessageEvent.contentIndex")
        if kind == "toolcall_start":
            index = _int(update.get("contentIndex"), "toolcall_start.contentIndex")
            partial = update.get("partial")
            _require(
                isinstance(partial, dict)
                and isinstance(partial.get("content"), list)
                and len(partial["content"]) > index,
                "toolcall_start.partial.content[contentIndex] missing",
                update,
            )
            block = partial["content"][index]
            _string(block, "id", "toolCall")
            _string(block, "name", "toolCall")
    elif event_type in ("tool_execution_update", "tool_execution_end"):
        _string(payload, "output", event_type)
        _require(payload.get("status") in TOOL_STATUSES, f"{event_type}.status", payload)
    elif event_type == "agent_end":
        _require(isinstance(payload.get("success"), bool), "agent_end.success", payload)
        error = payload.get("error")
        if error is not None:
            _string(error, "code", "agent_end.error")
            _string(error, "message", "agent_end.error")
    return frame


def decode_messages(result: dict) -> list[dict]:
    messages = result.get("messages")
    _require(isinstance(messages, list), "messages is not an array", result)
    for message in messages:
        _require(
            isinstance(message, dict) and message.get("role") in ROLES,
            "unknown message role",
            message,
        )
        content = message.get("content")
        _require(isinstance(content, list), "message content is not an array", message)
        for block in content:
            _require(
                isinstance(block, dict) and block.get("type") in BLOCKS,
                "unknown content block",
                block,
            )
    return messages


def decode_hello(result: dict) -> dict:
    _string(result, "connectionId", "hello")
    server = result.get("server")
    _string(server, "name", "server")
    _string(server, "version", "server")
    capabilities = result.get("capabilities")
    _require(
        isinstance(capabilities, dict) and isinstance(capabilities.get("resume"), bool),
        "capabilities.resume",
        result,
    )
    _int(capabilities.get("replayWindowSec"), "capabilities.replayWindowSec")
    return result


class SeedApp:
    """One run of the app: a connection, its current session and its last seqs."""

    def __init__(self, reactor, port: int, token: str):
        self._reactor = reactor
        self._port = port
        self._token = token
        self.client: RpcClient | None = None
        self.connection_id: str | None = None
        self.current: str | None = None
        self.last_seq_by_session: dict[str, int] = {}
        self.largest_frame = 0
        # What the app's decoders rejected, in events (a reply's failure raises at once).
        self.failures: list[str] = []

    async def connect(self, native_tools: list | None = None) -> dict:
        """Connect and say hello: the first time with its tools, after that resuming."""
        self.client = await RpcClient.connect(self._reactor, self._port, token=self._token)
        received = self.client._received

        def strictly(payload, is_binary):
            self.largest_frame = max(self.largest_frame, len(payload))
            if len(payload) > MAX_MESSAGE_BYTES:
                self.failures.append(f"a frame of {len(payload)} bytes drops the socket")
            received(payload, is_binary)
            frame = self.client.frames[-1]
            if frame.get("kind") == "event":
                try:
                    decode_event(frame)
                except DecodeFailure as failure:
                    self.failures.append(str(failure))
                    return
                self.last_seq_by_session[frame["sessionId"]] = frame["seq"]

        self.client._received = strictly
        params = {"client": {"name": "pi-ios", "version": "1.0"}}
        if self.connection_id is not None:
            params["resume"] = {
                "connectionId": self.connection_id,
                "lastSeqBySession": dict(self.last_seq_by_session),
            }
        elif native_tools is not None:
            params["nativeTools"] = native_tools
        hello = decode_hello(await self.call("hello", params))
        self.connection_id = hello["connectionId"]
        return hello

    def request(self, method: str, params: dict | None = None):
        """Send as the app does; fire with the whole response frame."""
        request_id = str(uuid.uuid4()).upper()
        envelope = {"v": 1, "kind": "request", "id": request_id, "method": method}
        if self.current is not None:
            envelope["sessionId"] = self.current
        if params is not None:
            envelope["params"] = params
        answered = self.client.expect_reply(request_id)
        self.client.send_raw(json.dumps(envelope).encode("utf-8"), binary=True)
        return answered

    async def call(self, method: str, params: dict | None = None) -> dict:
        """The result the app decodes; raises AppError for ``ok: false``."""
        frame = await self.request(method, params)
        _require(isinstance(frame.get("ok"), bool), "response.ok", frame)
        if not frame["ok"]:
            error = frame.get("error")
            raise AppError(_string(error, "code", "error"), _string(error, "message", "error"))
        _require(isinstance(frame.get("result"), dict), "a success without a result", frame)
        return frame["result"]

    async def create_chat(self, system_prompt: str = "You are helpful.") -> str:
        result = await self.call("session.create", {"mode": "chat", "systemPrompt": system_prompt})
        self.current = _string(result, "sessionId", "session.create")
        return self.current

    async def attach(self, session_id: str) -> dict:
        result = await self.call("session.attach", {"sessionId": session_id})
        self.current = session_id
        return result

    async def detach(self) -> None:
        await self.call("session.detach")
        self.current = None

    async def delete(self, session_id: str) -> dict:
        return await self.call("session.delete", {"sessionId": session_id})

    async def prompt(self, message: str, streaming_behavior: str | None = None) -> dict:
        params = {"type": "prompt", "message": message}
        if streaming_behavior is not None:
            params["streamingBehavior"] = streaming_behavior
        return await self.call("prompt", params)

    async def messages(self) -> list[dict]:
        return decode_messages(await self.call("get_messages", {"type": "get_messages"}))

    def events(self, session_id: str, event_type: str | None = None) -> list[dict]:
        return [
            f
            for f in self.client.event_frames(session_id)
            if event_type is None or f["type"] == event_type
        ]

    def wait_for(self, event_type: str, session_id: str, after_seq: int = 0):
        return self.client.wait_for_event(
            lambda f: (
                f["type"] == event_type and f["sessionId"] == session_id and f["seq"] > after_seq
            )
        )

    def text(self, session_id: str) -> str:
        """The answer text the app shows: every text delta it received, in order."""
        return "".join(
            f["payload"]["assistantMessageEvent"].get("delta", "")
            for f in self.events(session_id, "message_update")
            if f["payload"]["assistantMessageEvent"]["type"] == "text_delta"
        )


class AppError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
