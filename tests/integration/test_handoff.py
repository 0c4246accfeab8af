"""
Desk to phone and back (issue 26), with real pi 1.6: a conversation held by pi itself in a
scratch repository is listed by sessions.importable, imported as a code session (its
uncommitted changes applied) whose next prompt carries the earlier turns to the scripted
LLM; malformed, oversized and symlinked files and client-made ids are refused; the
session is exported (session.export and ``pi-server session export``) and opens in pi.
"""

import io
import json
import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from piserver.sessioncli import run as session_cli
from piserver.sessions.pifiles import encode_cwd
from tests.support.fakegithub import make_repository, run_git
from tests.support.fakellm import Text
from tests.support.piagent import spawn_pi
from tests.support.server import session_directories
from tests.support.wsclient import CallFailed, is_type

OVERSIZED = 33 * 1024 * 1024


def spawn_pi_in(pi_binary, agent_dir, cwd, *args):
    """``pi --mode rpc *args`` working in ``cwd``, as a user at the desk runs it."""
    return spawn_pi(reactor, pi_binary, agent_dir, args, cwd=cwd)


def texts(messages) -> str:
    return json.dumps(messages)


def write_session(path, cwd, *lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"type": "session", "version": 3, "id": "x" * 8, "timestamp": "t", "cwd": cwd}
    path.write_bytes(b"\n".join([json.dumps(header).encode(), *lines]) + b"\n")


@pytest_twisted.ensureDeferred
async def test_desk_to_phone_and_back(make_pi_server, fake_llm, agent_dir, pi_binary, tmp_path):
    repo = make_repository(
        str(tmp_path / "desk-repo"), default_branch="trunk", files={"app.py": "x = 1\n"}
    )
    with open(os.path.join(repo, "app.py"), "w") as f:
        f.write("x = 2\n")  # uncommitted, at the desk
    (agent_dir.path / "repos.json").write_text(
        json.dumps({"repos": [{"id": "desk", "name": "Desk", "path": repo}]})
    )
    imports = tmp_path / "pi-sessions"

    # The user talks to pi at the desk (real pi, RPC mode, pi's own session layout).
    fake_llm.script(Text("Noted: the number is 42."))
    desk = spawn_pi_in(pi_binary, agent_dir, repo, "--session-dir", str(imports / encode_cwd(repo)))
    await desk.send({"type": "prompt", "message": "remember the number 42"})
    await desk.wait_for_event("agent_end")
    await desk.stop()
    (original,) = (imports / encode_cwd(repo)).glob("*.jsonl")
    original_bytes = original.read_bytes()

    # Files that are listed but refused, and one that is never listed.
    bad = imports / "--elsewhere--" / "bad.jsonl"
    entry = {"type": "message", "id": "a1", "parentId": None, "message": {"role": "user"}}
    write_session(bad, "/tmp/bad", json.dumps(entry).encode(), b"not json")
    big = imports / "--elsewhere--" / "big.jsonl"
    write_session(big, "/tmp/big")
    with big.open("r+b") as f:
        f.truncate(OVERSIZED)
    outside = tmp_path / "outside.jsonl"
    write_session(outside, "/tmp/outside")
    (imports / "--elsewhere--" / "link.jsonl").symlink_to(outside)
    os.utime(original, (1e9, 2e9))  # the newest

    server = make_pi_server("--import-from", str(imports))
    client = await server.client()
    listing = await client.call("sessions.importable")
    assert "next" not in listing
    by_cwd = {entry["cwd"]: entry for entry in listing["sessions"]}
    assert set(by_cwd) == {repo, "/tmp/bad", "/tmp/big"}
    listed = listing["sessions"][0]
    assert listed["cwd"] == repo and listed["firstPrompt"] == "remember the number 42"
    assert listed["messages"] >= 2 and listed["bytes"] == len(original_bytes)
    assert listed["lastActivityAt"] == "2033-05-18T03:33:20Z"

    before = session_directories(agent_dir.path)
    with pytest.raises(CallFailed) as malformed:
        await client.call("session.import", {"importId": by_cwd["/tmp/bad"]["importId"]})
    assert malformed.value.code == "invalid_session_file"
    assert "line 3 is not JSON" in malformed.value.message
    with pytest.raises(CallFailed) as oversized:
        await client.call("session.import", {"importId": by_cwd["/tmp/big"]["importId"]})
    assert oversized.value.code == "invalid_session_file"
    assert "over the import limit" in oversized.value.message
    for made_up in (str(original), "../" + original.name, str(outside)):
        with pytest.raises(CallFailed) as unknown:
            await client.call("session.import", {"importId": made_up})
        assert unknown.value.code == "not_found"
    assert session_directories(agent_dir.path) == before
    assert list((agent_dir.path / "imports").iterdir()) == []

    # Imported as a code session of the repository, on its own branch, changes applied.
    imported = await client.call(
        "session.import", {"importId": listed["importId"], "withChanges": True}
    )
    session_id = imported["sessionId"]
    assert imported == {"sessionId": session_id, "mode": "code", "repoId": "desk"}
    checkout = str(server.sessions.sessions[session_id].cwd)
    assert run_git("branch", "--show-current", cwd=checkout).strip() == (f"pi/session-{session_id}")
    assert open(os.path.join(checkout, "app.py")).read() == "x = 2\n"

    # Asked for a chat session, the same conversation is one, without a checkout.
    chat = await client.call("session.import", {"importId": listed["importId"], "mode": "chat"})
    assert chat == {"sessionId": chat["sessionId"], "mode": "chat"}
    await client.call("session.delete", {"sessionId": chat["sessionId"]})

    # The next prompt is answered with the desk's turns in the model's context.
    fake_llm.script(Text("It was 42."))
    await client.call("session.attach", {"sessionId": session_id})
    await client.call("prompt", {"message": "which number?"}, session_id=session_id)
    await client.wait_for_event(is_type("agent_settled", session_id))
    context = texts(fake_llm.requests[-1]["messages"])
    assert "remember the number 42" in context and "Noted: the number is 42." in context
    assert "which number?" in context
    assert original.read_bytes() == original_bytes

    # Back to the desk: over the wire, and with the CLI where pi --resume looks.
    exported = await client.call("session.export", {"sessionId": session_id})
    header = json.loads(exported["jsonl"].split("\n", 1)[0])
    assert header["cwd"] == repo and exported["fileName"].endswith(f"_{header['id']}.jsonl")
    assert "It was 42." in exported["jsonl"]
    out, err = io.StringIO(), io.StringIO()
    desk_sessions = tmp_path / "desk-sessions"
    status = session_cli(
        ["--data-dir", str(agent_dir.path), "export", session_id, "--to", str(desk_sessions)],
        {},
        lambda: 2e9,
        out,
        err,
    )
    assert status == 0, err.getvalue()
    (written,) = (desk_sessions / encode_cwd(repo)).glob("*.jsonl")
    assert out.getvalue() == f"pi --session {written}\n"

    resumed = spawn_pi_in(pi_binary, agent_dir, tmp_path, "--session", str(written))
    try:
        messages = (await resumed.send({"type": "get_messages"}))["data"]["messages"]
    finally:
        await resumed.stop()
    turns = [m["role"] for m in messages if m["role"] in ("user", "assistant")]
    assert turns == ["user", "assistant", "user", "assistant"]
    assert "remember the number 42" in texts(messages) and "It was 42." in texts(messages)
    assert original.read_bytes() == original_bytes
