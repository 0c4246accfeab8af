"""
``abort`` while the real pi is still preparing a prompt (decoding and resizing its images,
before the run starts) ends the run within seconds: pi does not answer an abort then, so
the server stops it, tells the clients the run ended, and the session goes on.
"""

import base64
import struct
import time
import zlib

import pytest_twisted
from twisted.internet import reactor

from piserver.sessions import aborts
from tests.integration.test_hung_agent import gone

SAFETY_NET = 60.0
# Enough tiny images to keep pi busy for many seconds here (about ten per second under
# load, a few dozen on an idle machine: 1,000 keep it busy far beyond the 3 s it has to
# answer), while the prompt itself stays small (150 kB).
IMAGES = 1000


def tiny_png(side: int = 8) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes([row, 7 * row % 256, 13 * row % 256]) * side for row in range(side)
    )
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest_twisted.ensureDeferred
async def test_abort_while_pi_prepares_images_ends_the_run(make_pi_server, fake_llm):
    server = make_pi_server()
    client = await server.client()
    session_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
    session = server.sessions.sessions[session_id]
    pid = session.agent.pid
    image = {
        "type": "image",
        "data": base64.b64encode(tiny_png()).decode(),
        "mimeType": "image/png",
    }
    prompt = client.request(
        "prompt", {"message": "look", "images": [image] * IMAGES}, session_id=session_id
    )
    # pi has taken the prompt (it streams) but is still on its images.
    while not (await client.call("get_state", session_id=session_id))["isStreaming"]:
        pass
    started = time.monotonic()
    answer = await client.call("abort", session_id=session_id)
    took = time.monotonic() - started
    assert answer == {"agentStopped": True}
    assert took < aborts.ABORT_ANSWER_TIMEOUT + 5
    # The run is over for every client, as aborted; the prompt says why it did not run.
    end = await client.wait_for_event(
        lambda f: f["type"] == "agent_end" and f["sessionId"] == session_id
    ).addTimeout(SAFETY_NET, reactor)
    assert end["payload"]["error"]["code"] == "aborted"
    settled = await client.wait_for_event(
        lambda f: f["type"] == "agent_settled" and f["sessionId"] == session_id
    ).addTimeout(SAFETY_NET, reactor)
    assert settled["payload"]["aborted"] is True
    refused = await prompt.addTimeout(SAFETY_NET, reactor)
    assert refused["error"]["code"] == "agent_exited"
    assert gone(pid)
    # The session goes on, with a new agent; the aborted prompt never reached the model.
    requests_before = len(fake_llm.requests)
    await client.call("prompt", {"message": "and now?"}, session_id=session_id)
    await client.wait_for_event(
        lambda f: f["type"] == "agent_settled" and f["sessionId"] == session_id and f is not settled
    ).addTimeout(SAFETY_NET, reactor)
    assert session.agent.pid != pid
    assert len(fake_llm.requests) == requests_before + 1
    assert requests_before == 0
