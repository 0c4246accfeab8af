"""
What the seed's iOS client reads that pi 1.x no longer sends, added to pi's events.

The seed app was written against pi 0.x. It reads a run's outcome from
``agent_end``'s ``success`` and ``error {code, message}``, a tool's output from
``tool_execution_update``/``_end``'s ``output`` and ``status``, and a tool call's
id and name from ``assistantMessageEvent.partial.content[contentIndex]`` of
``toolcall_start``. These functions add those fields beside pi's own (which stay
as they are), so every client sees them, live and in the journal. Each returns
a new payload, or None when the event needs nothing.

``seed_messages`` maps a conversation onto the roles and content blocks the app
can decode; clients that say they read pi's messages as they are
(``hello.features: ["piMessages"]``) get them unchanged.
"""

from __future__ import annotations

from piserver.sessions.streamed import StreamingMessage

ENRICHED = ("agent_end", "tool_execution_update", "tool_execution_end", "message_update")
FAILED_STOPS = {"error": "model_error", "aborted": "aborted"}
SEED_ROLES = ("user", "assistant", "system", "tool", "toolResult")
SEED_BLOCKS = ("text", "thinking", "tool_use", "toolCall", "tool_result")


def enrich(event_type: str, payload: dict, streaming: StreamingMessage | None) -> dict | None:
    if event_type == "message_update":
        return _toolcall_start(payload, streaming)
    if event_type == "agent_end":
        return _agent_end(payload)
    if event_type in ("tool_execution_update", "tool_execution_end"):
        return _tool_output(event_type, payload)
    return None


def _agent_end(payload: dict) -> dict | None:
    if "success" in payload:
        return None
    messages = payload.get("messages")
    last = (
        next(
            (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
            None,
        )
        if isinstance(messages, list)
        else None
    )
    stop = last.get("stopReason") if last else None
    if stop not in FAILED_STOPS:
        return {**payload, "success": True}
    message = last.get("errorMessage")
    if not isinstance(message, str) or not message:
        message = "the run was aborted" if stop == "aborted" else "the model failed"
    return {**payload, "success": False, "error": {"code": FAILED_STOPS[stop], "message": message}}


def result_text(result) -> str:
    """The text blocks of a tool result, joined (what a client shows as its output)."""
    if not isinstance(result, dict) or not isinstance(result.get("content"), list):
        return ""
    return "".join(
        block["text"]
        for block in result["content"]
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )


def _tool_output(event_type: str, payload: dict) -> dict | None:
    if "output" in payload and "status" in payload:
        return None
    if event_type == "tool_execution_update":
        # The app knows success, error and cancelled: a tool still running has not failed.
        return {**payload, "output": result_text(payload.get("partialResult")), "status": "success"}
    status = "error" if payload.get("isError") else "success"
    return {**payload, "output": result_text(payload.get("result")), "status": status}


def _toolcall_start(payload: dict, streaming: StreamingMessage | None) -> dict | None:
    update = payload.get("assistantMessageEvent")
    if (
        not isinstance(update, dict)
        or update.get("type") != "toolcall_start"
        or "partial" in update
        or streaming is None
    ):
        return None
    index = update.get("contentIndex")
    block = streaming.block(index) if isinstance(index, int) else None
    if block is None:
        return None
    # Only the blocks up to the tool call: the text before it is not sent again in full.
    content = [{"type": "text", "text": ""}] * index + [block]
    return {
        **payload,
        "assistantMessageEvent": {**update, "partial": {"role": "assistant", "content": content}},
    }


def seed_messages(messages: list) -> list:
    """``messages`` with every role and content block one the seed app knows: pi's own
    kinds are kept, others become text (a compaction summary, a bash run, an image)."""
    return [mapped for message in messages if (mapped := _seed_message(message)) is not None]


def _seed_message(message) -> dict | None:
    if not isinstance(message, dict):
        return None
    role = message.get("role")
    if role in SEED_ROLES:
        content = message.get("content")
        if isinstance(content, str):
            if role == "system" and not content:
                # pi 1.x's system prompt comes in sections; the app has nothing to show.
                return None
            return {**message, "content": [{"type": "text", "text": content}]}
        if isinstance(content, list):
            return {**message, "content": [_seed_block(block) for block in content]}
        return {**message, "content": []}
    return {
        "role": "user" if role == "bashExecution" else "system",
        "content": [{"type": "text", "text": _describe(message)}],
        **({"timestamp": message["timestamp"]} if "timestamp" in message else {}),
    }


def _seed_block(block) -> dict:
    if isinstance(block, dict) and block.get("type") in SEED_BLOCKS:
        return block
    kind = block.get("type") if isinstance(block, dict) else type(block).__name__
    return {"type": "text", "text": f"[{kind}]"}


def _describe(message: dict) -> str:
    role = message.get("role")
    if role == "bashExecution":
        return f"Ran `{message.get('command', '')}`\n```\n{message.get('output', '')}\n```"
    for key in ("summary", "content", "text"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return f"[{role}]"
