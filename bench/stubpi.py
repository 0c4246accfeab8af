"""
A fake ``pi --mode rpc`` that replays a recorded pi event stream as fast as it
can: ``python stubpi.py --stream FILE --mode rpc [pi's arguments, ignored]``.

``FILE`` holds pi's event lines (JSON lines, as pi wrote them). The prompt
``{"type": "prompt", "message": "replay N"}`` is answered at once (as pi 1.6
answers a prompt that starts a run), then the stream's lines are written over
and over until N events are out, in one write. ``get_state`` and
``get_messages`` answer like an idle pi with no conversation; ``abort``
succeeds; anything else fails like an unknown command. ``--version`` prints the
version of pi the recordings come from, which pi-server checks at start.
"""

import json
import sys

VERSION = "1.6.0"

stdin = sys.stdin.buffer
stdout = sys.stdout.buffer


def answer(command: dict, data=None, error=None) -> None:
    response = {"type": "response", "command": command.get("type"), "success": error is None}
    if "id" in command:
        response["id"] = command["id"]
    if data is not None:
        response["data"] = data
    if error is not None:
        response["error"] = error
    stdout.write(json.dumps(response).encode() + b"\n")
    stdout.flush()


def events(lines: list[bytes], count: int) -> bytes:
    rounds, rest = divmod(count, len(lines))
    return b"".join(line + b"\n" for line in lines * rounds + lines[:rest])


def main(argv: list[str]) -> int:
    if "--version" in argv:
        stdout.write(f"{VERSION}\n".encode())
        return 0
    with open(argv[argv.index("--stream") + 1], "rb") as stream:
        lines = stream.read().splitlines()
    state = {
        "model": {"provider": "fake", "id": "fake-1"},
        "isStreaming": False,
        "messageCount": 0,
        "pendingMessageCount": 0,
    }
    for line in iter(stdin.readline, b""):
        if not line.strip():
            continue
        command = json.loads(line)
        kind = command.get("type")
        if kind == "get_state":
            answer(command, state)
        elif kind == "get_messages":
            answer(command, {"messages": []})
        elif kind == "abort":
            answer(command)
        elif kind == "prompt":
            count = int(command["message"].split()[1])
            output = events(lines, count)
            answer(command, {"disposition": "started"})
            stdout.write(output)
            stdout.flush()
        else:
            answer({"type": kind}, error=f"Unknown command: {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
