"""
The assistant message being streamed, rebuilt from pi's delta-only updates.

Since pi 0.84 a ``message_update`` carries only what changed (``text_delta``,
``toolcall_start``…), not the message so far. The server still needs that
message: a snapshot shows it to a client that resumes mid-answer, and clients of
the seed's protocol read a tool call's id and name from
``assistantMessageEvent.partial``. This follows pi's own reconstruction rules
(docs/json.md, "Reconstruct streaming messages"): deltas are appended per
``contentIndex``, a block's ``*_end`` replaces what was built with the
authoritative content, and ``message_end`` ends it.

Text is kept as a list of pieces and joined only when the message is asked for,
so a long answer costs one append per delta.
"""

from __future__ import annotations

import json

_TEXT_FIELDS = {"text": "text", "thinking": "thinking"}


class StreamingMessage:
    """One assistant message under construction; ``message()`` gives it as pi would."""

    def __init__(self, start: dict):
        self._head = {key: value for key, value in start.items() if key != "content"}
        self._blocks: list[dict | None] = []
        # For each block being streamed: the pieces of its text, thinking or arguments.
        self._pieces: dict[int, list[str]] = {}

    def apply(self, update: dict, usage=None) -> None:
        """Apply one ``assistantMessageEvent``; unknown types change nothing."""
        kind = update.get("type")
        index = update.get("contentIndex")
        if usage is not None:
            self._head["usage"] = usage
        if not isinstance(index, int) or index < 0 or index > 10_000:
            return
        if kind in ("text_start", "thinking_start"):
            field = _TEXT_FIELDS[kind.split("_")[0]]
            self._set(index, {"type": field, field: ""})
            self._pieces[index] = []
        elif kind == "toolcall_start":
            self._set(
                index,
                {
                    "type": "toolCall",
                    "id": update.get("id"),
                    "name": update.get("toolName"),
                    "arguments": {},
                },
            )
            self._pieces[index] = []
        elif kind in ("text_delta", "thinking_delta", "toolcall_delta"):
            delta = update.get("delta")
            if isinstance(delta, str):
                self._pieces.setdefault(index, []).append(delta)
        elif kind in ("text_end", "thinking_end"):
            field = _TEXT_FIELDS[kind.split("_")[0]]
            content = update.get("content")
            block = self._block(index) or {"type": field}
            if isinstance(content, str):
                block = {**block, field: content}
                self._pieces.pop(index, None)
            self._set(index, block)
        elif kind == "toolcall_end":
            tool_call = update.get("toolCall")
            if isinstance(tool_call, dict):
                self._set(index, tool_call)
                self._pieces.pop(index, None)

    def block(self, index: int) -> dict | None:
        """Content block ``index`` as it stands, or None."""
        block = self._block(index)
        if block is None:
            return None
        pieces = self._pieces.get(index)
        if not pieces:
            return block
        joined = "".join(pieces)
        if block.get("type") == "toolCall":
            # Arguments stream as JSON text: show them once they parse.
            try:
                arguments = json.loads(joined)
            except ValueError:
                return block
            return {**block, "arguments": arguments}
        field = block.get("type")
        return {**block, field: block.get(field, "") + joined}

    def message(self) -> dict:
        """The message so far: pi's ``message_start`` fields with the content built."""
        content = [self.block(i) or {"type": "text", "text": ""} for i in range(len(self._blocks))]
        return {**self._head, "content": content}

    def _block(self, index: int) -> dict | None:
        return self._blocks[index] if index < len(self._blocks) else None

    def _set(self, index: int, block: dict) -> None:
        while len(self._blocks) <= index:
            self._blocks.append(None)
        self._blocks[index] = block
