"""StreamingMessage: the assistant message rebuilt from pi 1.x's delta-only updates."""

import json

from piserver.sessions.streamed import StreamingMessage
from tests.support import events


def test_a_recorded_answer_is_rebuilt_as_its_message_end_says():
    message = None
    ended = []
    for line in events.load("text_and_tools"):
        event = json.loads(line)
        if event["type"] == "message_start" and event["message"]["role"] == "assistant":
            message = StreamingMessage(event["message"])
        elif event["type"] == "message_update":
            message.apply(event["assistantMessageEvent"], event.get("usage"))
        elif event["type"] == "message_end" and event["message"]["role"] == "assistant":
            ended.append((message.message()["content"], event["message"]["content"]))
    assert len(ended) == 2
    for built, final in ended:
        assert built == final


def test_blocks_show_what_has_streamed_so_far():
    message = StreamingMessage({"role": "assistant", "content": []})
    message.apply({"type": "thinking_start", "contentIndex": 0})
    message.apply({"type": "thinking_delta", "contentIndex": 0, "delta": "hm"})
    message.apply({"type": "toolcall_start", "contentIndex": 1, "id": "c1", "toolName": "bash"})
    assert message.block(1) == {"type": "toolCall", "id": "c1", "name": "bash", "arguments": {}}
    message.apply({"type": "toolcall_delta", "contentIndex": 1, "delta": '{"command": "l'})
    # Arguments that do not parse yet are not shown half-way.
    assert message.block(1)["arguments"] == {}
    message.apply({"type": "toolcall_delta", "contentIndex": 1, "delta": 's"}'})
    assert message.block(1)["arguments"] == {"command": "ls"}
    assert message.message()["content"][0] == {"type": "thinking", "thinking": "hm"}


def test_an_end_replaces_what_was_built_and_nonsense_is_ignored():
    message = StreamingMessage({"role": "assistant", "content": []})
    message.apply({"type": "text_start", "contentIndex": 0})
    message.apply({"type": "text_delta", "contentIndex": 0, "delta": "draft"})
    message.apply({"type": "text_end", "contentIndex": 0, "content": "final"})
    message.apply({"type": "text_delta", "contentIndex": "x", "delta": "?"})
    message.apply({"type": "text_delta", "contentIndex": 10**9, "delta": "?"})
    message.apply({"type": "who_knows", "contentIndex": 0})
    assert message.message()["content"] == [{"type": "text", "text": "final"}]
