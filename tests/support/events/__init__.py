"""pi event streams for tests: recorded from the real pi, recordable again, and synthetic.

``text_and_tools.jsonl`` and ``aborted.jsonl`` are pi 1.6.0's stdout events (responses
left out), byte for byte, for the scenarios :func:`text_and_tools` and :func:`aborted`
below, recorded against the scripted LLM by ``python -m tests.support.events.record``.
:func:`synthetic_event` makes pi-like events from a seq alone, for tests that must know
what any seq holds without keeping the stream (a child process killed at random).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.fakellm import Hang, Reply, Text, Tokens, ToolCall

DIRECTORY = Path(__file__).parent
RECORDED = ("text_and_tools", "aborted")


def load(name: str) -> list[bytes]:
    """The recorded stream ``name``: one JSON event per item, as pi wrote it."""
    return (DIRECTORY / f"{name}.jsonl").read_bytes().splitlines()


class RawLines:
    """pi's stdout, line by line and byte for byte, next to what a
    :class:`~tests.support.piagent.PiRpc` parses (install before the reactor runs)."""

    def __init__(self, pi) -> None:
        self.lines: list[bytes] = []
        self._buffer = b""
        parse = pi.outReceived

        def out_received(data: bytes) -> None:
            self._buffer += data
            *lines, self._buffer = self._buffer.split(b"\n")
            self.lines.extend(line.removesuffix(b"\r") for line in lines)
            parse(data)

        pi.outReceived = out_received

    def events(self, start: int = 0) -> list[bytes]:
        """The event lines (not responses) from ``lines[start]`` on."""
        return [line for line in self.lines[start:] if json.loads(line)["type"] != "response"]


async def long_answer(pi, fake_llm, agent_dir, tokens: int = 2000) -> None:
    """One answer of ``tokens`` one-token chunks."""
    fake_llm.script(Tokens(tokens))
    await pi.send({"type": "prompt", "message": "write a lot"})
    await pi.wait_for_event("agent_settled")


async def text_and_tools(pi, fake_llm, agent_dir) -> None:
    """Text, then pi's ``bash`` and ``read`` tools in parallel, then a short answer."""
    (agent_dir.project / "f.txt").write_text("content of f\n")
    fake_llm.script(
        Reply(
            Text("Let me look."),
            ToolCall("bash", {"command": "cat f.txt"}),
            ToolCall("read", {"path": "f.txt"}),
        ),
        Text("Done."),
    )
    await pi.send({"type": "prompt", "message": "look at f.txt"})
    await pi.wait_for_event("agent_settled")


async def aborted(pi, fake_llm, agent_dir) -> None:
    """20 tokens, then the LLM hangs and the run is aborted."""
    fake_llm.script(Reply(Tokens(20), Hang()))
    await pi.send({"type": "prompt", "message": "never finish"})
    # text_start and the 20 deltas: everything the LLM sent has arrived.
    await pi.wait_for_event("message_update", 21)
    await pi.send({"type": "abort"})
    await pi.wait_for_event("agent_settled")


ANSWER_LENGTH = 40
"""Events per synthetic answer."""


def synthetic_event(seq: int) -> tuple[str, dict]:
    """The pi-like event for ``seq``: answers of :data:`ANSWER_LENGTH` events
    (``message_start``, delta-only ``message_update``s, ``message_end``, a tool result),
    shaped as pi 1.x sends them."""
    answer, position = divmod(seq - 1, ANSWER_LENGTH)
    words = [f"w{answer}.{index} " for index in range(position)]
    if position == 0:
        return "message_start", {"type": "message_start", "message": _message([])}
    if position == ANSWER_LENGTH - 2:
        words = words[:-1]
        return "message_end", {"type": "message_end", "message": _message(words, final=True)}
    if position == ANSWER_LENGTH - 1:
        return "tool_execution_end", {
            "type": "tool_execution_end",
            "toolCallId": f"call_{answer}",
            "toolName": "bash",
            "result": {"content": [{"type": "text", "text": f"output {answer}\n"}]},
            "isError": False,
        }
    return "message_update", {
        "type": "message_update",
        "usage": _usage(len(words)),
        "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": words[-1]},
    }


def _usage(output: int) -> dict:
    """pi 1.6's cumulative usage, as it repeats it on every update."""
    return {
        "input": 595,
        "output": output,
        "cacheRead": 0,
        "cacheWrite": 0,
        "reasoning": 0,
        "totalTokens": 595 + output,
        "cost": {
            "input": 0,
            "output": 0,
            "cacheRead": 0,
            "cacheWrite": 0,
            "total": 0,
            "totalFromProvider": False,
        },
    }


def _message(words: list[str], final: bool = False) -> dict:
    content = [{"type": "text", "text": "".join(words)}] if words else []
    return {
        "role": "assistant",
        "content": content,
        "usage": {"input": 10, "output": len(words) if final else 0},
        "stopReason": "stop",
        "timestamp": 1795559412290,
    }


def encode(payload: dict) -> bytes:
    """Compact JSON, as pi writes it (lone surrogates escaped, as JSON.stringify does)."""
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload, separators=(",", ":")).encode("ascii")
