"""compat: the fields the seed's iOS client reads, added to pi 1.x's events."""

from piserver.sessions import seedcompat as compat
from piserver.sessions.streamed import StreamingMessage


def test_agent_end_says_whether_the_run_succeeded():
    ok = compat.enrich(
        "agent_end",
        {"type": "agent_end", "messages": [{"role": "assistant", "stopReason": "stop"}]},
        None,
    )
    assert ok["success"] is True and "error" not in ok
    failed = compat.enrich(
        "agent_end",
        {
            "type": "agent_end",
            "messages": [
                {"role": "assistant", "stopReason": "error", "errorMessage": "429 rate limited"},
                {"role": "toolResult"},
            ],
        },
        None,
    )
    assert failed["success"] is False
    assert failed["error"] == {"code": "model_error", "message": "429 rate limited"}
    aborted = compat.enrich(
        "agent_end",
        {"type": "agent_end", "messages": [{"role": "assistant", "stopReason": "aborted"}]},
        None,
    )
    assert aborted["error"]["code"] == "aborted"
    # The server's own crash report already says so.
    assert compat.enrich("agent_end", {"type": "agent_end", "success": False}, None) is None


def test_tool_events_carry_their_output_and_status():
    update = compat.enrich(
        "tool_execution_update",
        {
            "type": "tool_execution_update",
            "toolCallId": "c",
            "partialResult": {"content": [{"type": "text", "text": "par"}, {"type": "image"}]},
        },
        None,
    )
    assert (update["output"], update["status"]) == ("par", "success")
    end = compat.enrich(
        "tool_execution_end",
        {
            "type": "tool_execution_end",
            "isError": True,
            "result": {"content": [{"type": "text", "text": "boom"}]},
        },
        None,
    )
    assert (end["output"], end["status"]) == ("boom", "error")
    assert end["result"] == {"content": [{"type": "text", "text": "boom"}]}


def test_toolcall_start_gets_the_partial_the_app_reads():
    streaming = StreamingMessage({"role": "assistant", "content": []})
    streaming.apply({"type": "text_start", "contentIndex": 0})
    start = {"type": "toolcall_start", "contentIndex": 1, "id": "call_1", "toolName": "bash"}
    streaming.apply(start)
    enriched = compat.enrich(
        "message_update", {"type": "message_update", "assistantMessageEvent": start}, streaming
    )
    partial = enriched["assistantMessageEvent"]["partial"]
    assert partial["content"][1] == {
        "type": "toolCall",
        "id": "call_1",
        "name": "bash",
        "arguments": {},
    }
    assert enriched["assistantMessageEvent"]["toolName"] == "bash"
    delta = {
        "type": "message_update",
        "assistantMessageEvent": {"type": "text_delta", "contentIndex": 0, "delta": "x"},
    }
    assert compat.enrich("message_update", delta, streaming) is None


def test_messages_are_mapped_onto_what_the_app_decodes():
    mapped = compat.seed_messages(
        [
            {"role": "system", "content": "", "sections": {"preamble": "..."}},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "image", "data": "...", "mimeType": "image/png"},
                ],
            },
            {"role": "bashExecution", "command": "ls", "output": "a\n", "timestamp": 5},
            {"role": "compactionSummary", "summary": "Earlier: hello."},
            {"role": "assistant", "content": [{"type": "toolCall", "id": "c", "name": "bash"}]},
        ]
    )
    assert [m["role"] for m in mapped] == ["user", "user", "system", "assistant"]
    assert mapped[0]["content"][1] == {"type": "text", "text": "[image]"}
    assert mapped[1]["content"][0]["text"].startswith("Ran `ls`")
    assert mapped[1]["timestamp"] == 5
    assert mapped[2]["content"] == [{"type": "text", "text": "Earlier: hello."}]
