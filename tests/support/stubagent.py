"""A fake ``pi --mode rpc`` for fault injection: ``python stubagent.py --mode rpc [options]``.

It reads JSON lines on stdin and answers like pi (``{"id", "type": "response",
"command", "success", "data"|"error"}``); commands whose type starts with
``stub_`` misbehave on request:

- ``stub_garbage``: writes lines that are not JSON objects, then the event
  ``stub_after_garbage``, then answers.
- ``stub_big_line {size}``: writes the event ``stub_big`` whose ``text`` is
  ``size`` characters (ASCII and 2-byte UTF-8) in 64 KiB writes, then answers.
- ``stub_split_utf8``: writes the event ``stub_split`` up to the middle of a
  4-byte UTF-8 character, flushes, waits for a line ``{"type":"stub_continue"}``
  on stdin, writes the rest, then answers.
- ``stub_never_answer``: no answer, ever.
- ``stub_exit {code}``: exits at once with ``code``, without answering.
- ``stub_stderr {lines}``: writes ``lines`` numbered lines to stderr, then answers.
- ``stub_fail``: answers ``success: false`` with error "stub failure".
- ``stub_env``: answers with ``{env, cwd, argv}``.
- ``stub_child``: starts ``sleep 600`` (as a tool would start a shell) and answers
  with ``{pid}``.

Options: ``--ignore-eof`` keeps running after stdin ends (pi exits then),
``--ignore-term`` ignores SIGTERM, ``--crash-at-start`` writes to stderr and
exits with code 3 before reading anything.  Other arguments are ignored, as
pi's flags would be meaningless here.
"""

import json
import os
import signal
import subprocess
import sys

SPLIT_TEXT = "before \U0001f600 after \u00e9\u20ac"
CHUNK = 64 * 1024

stdin = sys.stdin.buffer
stdout = sys.stdout.buffer


def write(data: bytes) -> None:
    stdout.write(data)
    stdout.flush()


def output(message: dict) -> None:
    write(json.dumps(message, ensure_ascii=False).encode() + b"\n")


def answer(command: dict, data=None, error=None) -> None:
    response = {"type": "response", "command": command.get("type"), "success": error is None}
    if "id" in command:
        response["id"] = command["id"]
    if data is not None:
        response["data"] = data
    if error is not None:
        response["error"] = error
    output(response)


def big_line(size: int) -> None:
    text = ("ab\u00e9" * (size // 3 + 1))[:size]
    line = json.dumps({"type": "stub_big", "text": text}, ensure_ascii=False).encode() + b"\n"
    for start in range(0, len(line), CHUNK):
        write(line[start : start + CHUNK])


def split_utf8() -> None:
    line = json.dumps({"type": "stub_split", "text": SPLIT_TEXT}, ensure_ascii=False).encode()
    middle = line.index("\U0001f600".encode()) + 2
    write(line[:middle])
    continued = json.loads(stdin.readline())
    assert continued == {"type": "stub_continue"}, continued
    write(line[middle:] + b"\n")


def handle(command: dict) -> None:
    kind = command.get("type")
    if kind == "get_state":
        answer(command, {"stub": True, "pid": os.getpid(), "isStreaming": False})
    elif kind == "abort":
        answer(command)
    elif kind == "stub_garbage":
        write(b'this is not json\n[1, 2, 3]\n"a string"\n\xff\xfe\xfd\n{"unclosed": \n')
        output({"type": "stub_after_garbage"})
        answer(command, {})
    elif kind == "stub_big_line":
        big_line(command["size"])
        answer(command, {})
    elif kind == "stub_split_utf8":
        split_utf8()
        answer(command, {})
    elif kind == "stub_never_answer":
        pass
    elif kind == "stub_exit":
        os._exit(command.get("code", 1))
    elif kind == "stub_stderr":
        for number in range(command.get("lines", 1)):
            sys.stderr.write(f"stub stderr line {number}\n")
        sys.stderr.flush()
        answer(command, {})
    elif kind == "stub_fail":
        answer(command, error="stub failure")
    elif kind == "stub_child":
        child = subprocess.Popen(
            ["sleep", "600"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        answer(command, {"pid": child.pid})
    elif kind == "stub_env":
        answer(command, {"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[1:]})
    else:
        # pi answers unknown commands without their id
        answer({"type": kind}, error=f"Unknown command: {kind}")


def main(argv: list[str]) -> int:
    if "--crash-at-start" in argv:
        sys.stderr.write("stub: fatal start-up error\n")
        return 3
    if "--ignore-term" in argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for line in iter(stdin.readline, b""):
        line = line.rstrip(b"\n").rstrip(b"\r")
        if line:
            handle(json.loads(line))
    if "--ignore-eof" in argv:
        while True:
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
