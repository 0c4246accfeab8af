"""
Issue 21, points 5, 6, 7, 12, 13 (events) and 14 (a FIFO as the index) attacked with the
real pi agent in its real bubblewrap sandbox, driven by the scripted LLM: the agent's own
tools plant links and FIFOs and run a race in the background, while a client reads its
files, exports the conversation and clones the session. The server reads the agent's
files only through common.safefs: no answer and no file of the new session ever holds a
secret of the data dir.
"""

import json
import os
import time

import pytest_twisted
from twisted.internet import reactor

from piserver.common.errors import InvalidState
from piserver.repos.git import Git
from tests.integration.test_sandbox import is_event, labelled, tool_results
from tests.integration.test_server_git_hostile import make_shipping
from tests.support.fakegithub import git_env, make_old_worktree, make_repository, run_git
from tests.support.fakellm import Reply, Text, ToolCall
from tests.support.hostilegit import local_session
from tests.support.processes import eventually
from tests.support.seedclient import SeedApp
from tests.support.server import TOKEN
from tests.support.wsclient import CallFailed

SERVER_SECRET = "server-token-secret-0123456789"
DOTENV_MARKER = "dotenv-file-marker-0123456789"
SECRETS = (SERVER_SECRET, DOTENV_MARKER, TOKEN)
# Calls a client makes while the agent swaps its directories (three each round).
ROUNDS = 150
# What the agent runs in the background: swaps its checkout's directory "sub" with a
# symlink to the data dir (renameat2 RENAME_EXCHANGE), and swaps each HTML export pi
# writes for a symlink to server-token, until a "stop" file appears.
RACE = r"""
import ctypes, os, signal, struct, time
libc = ctypes.CDLL(None, use_errno=True)
data_dir, pi_dir = {data_dir!r}, {pi_dir!r}
os.makedirs("sub", exist_ok=True)
with open("sub/file.txt", "w") as f:
    f.write("harmless\n")
if not os.path.lexists("link"):
    os.symlink(data_dir, "link")
watcher = os.fork()
if watcher == 0:
    # The export watcher: told by inotify of each file pi creates (IN_CREATE).
    events = libc.inotify_init1(0)
    libc.inotify_add_watch(events, pi_dir.encode(), 0x100)
    while True:
        data, at = os.read(events, 65536), 0
        while at < len(data):
            length = struct.unpack_from("iIII", data, at)[3]
            name = data[at + 16 : at + 16 + length].rstrip(b"\0").decode()
            at += 16 + length
            if name.startswith(".export-"):
                temporary = os.path.join(pi_dir, ".swap")
                if os.path.lexists(temporary):
                    os.unlink(temporary)
                os.symlink(os.path.join(data_dir, "server-token"), temporary)
                # Counted first: the watcher is killed at any moment once the test ends.
                with open("export-swaps", "a") as f:
                    f.write("x")
                os.rename(temporary, os.path.join(pi_dir, name))
swaps = 0
deadline = time.monotonic() + 60
while not os.path.exists("stop") and time.monotonic() < deadline:
    if libc.renameat2(-100, b"sub", -100, b"link", 2) == 0:
        swaps += 1
os.kill(watcher, signal.SIGKILL)
exports = os.path.getsize("export-swaps") if os.path.exists("export-swaps") else 0
with open("race-count.txt", "w") as f:
    f.write(f"{{swaps}} {{exports}}\n")
"""


def write_server_files(data_dir):
    (data_dir / "server-token").write_text(SERVER_SECRET + "\n")
    (data_dir / ".env").write_text(f"# {DOTENV_MARKER}\nSANDBOX_TEST=1\n")


def source_state(source) -> str:
    """The source repository's refs but the sessions' own branches (a clone makes one),
    after checking that its objects are whole."""
    run_git("fsck", "--no-progress", cwd=source)
    refs = run_git("for-each-ref", cwd=source).splitlines()
    return "\n".join(line for line in refs if "refs/heads/pi/" not in line)


def files_under(directory) -> dict[str, bytes]:
    """Every regular file under ``directory`` (no link followed), by relative path."""
    found = {}
    for top, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    found[os.path.relpath(path, directory)] = f.read()
    return found


def race_log(session) -> str:
    try:
        log = (session.cwd / "race.log").read_text()[-2000:]
    except OSError as e:
        log = str(e)
    return f"race.log: {log!r}; checkout: {sorted(os.listdir(session.cwd))}"


async def answer_or_code(d):
    try:
        return await d
    except CallFailed as failed:
        return failed.code


@pytest_twisted.ensureDeferred
async def test_links_fifos_and_swaps_in_the_agents_files_reach_nothing_of_the_server(
    make_pi_server, agent_dir, fake_llm, tmp_path, captured_log
):
    data_dir = agent_dir.path
    write_server_files(data_dir)
    source = make_repository(
        str(tmp_path / "source"), default_branch="main", files={"README.md": "# source\n"}
    )
    (data_dir / "repos.json").write_text(
        json.dumps({"repos": [{"id": "src", "name": "Source", "path": source}]})
    )
    # The client's loop is faster than a phone's: no rate limit in the way.
    server = make_pi_server("--requests-per-second", "100000")
    assert server.service.config.sandbox == "bwrap"
    client = await server.client()
    session_id = (await client.call("session.create", {"mode": "code", "repoId": "src"}))[
        "sessionId"
    ]
    session = server.sessions.sessions[session_id]
    before = source_state(source)
    pi_dir, agent = str(session.pi_session_dir), str(session.agent_dir)
    script = RACE.format(data_dir=str(data_dir), pi_dir=pi_dir)
    plant = (
        f"ln -sf {data_dir}/server-token {agent}/settings.json"
        f" && ln -s {data_dir}/.env {pi_dir}/dotenv.jsonl"
        f" && ln -s /proc/self/environ {pi_dir}/environ.jsonl"
        f" && mkfifo {pi_dir}/fifo.jsonl && echo planted"
    )
    fake_llm.script(
        Reply(
            ToolCall(
                "write", {"path": ".gitignore", "content": "sub\nlink\nrace*\nstop\nexport-swaps\n"}
            ),
            ToolCall("write", {"path": "race.py", "content": script}, id="call-write"),
        ),
        # pi runs one turn's tool calls at once: the script is written first.
        Reply(
            labelled("start", "nohup python3 race.py > race.log 2>&1 < /dev/null & echo started"),
            labelled("plant", plant),
        ),
        Text("racing"),
    )
    await client.call("prompt", {"message": "race"}, session_id=session_id)
    await client.wait_for_event(is_event("agent_settled", session_id))
    results = tool_results(fake_llm.requests[2])
    assert "started" in results["start"] and "planted" in results["plant"], results

    # Point 6: reads while the agent swaps "sub" with a link to the data dir.
    await eventually(
        lambda: os.path.lexists(session.cwd / "link"),
        lambda: f"the link; the race log: {race_log(session)}",
        timeout=20,
    )
    outcomes = {"listed": 0, "read": 0, "refused": 0}
    answers = []
    for _ in range(ROUNDS):
        listing = await answer_or_code(
            client.call("session.files", {"path": "sub"}, session_id=session_id)
        )
        token = await answer_or_code(
            client.call("session.read_file", {"path": "sub/server-token"}, session_id=session_id)
        )
        harmless = await answer_or_code(
            client.call("session.read_file", {"path": "sub/file.txt"}, session_id=session_id)
        )
        answers += [listing, token, harmless]
        outcomes["listed"] += isinstance(listing, dict)
        outcomes["read"] += isinstance(harmless, dict)
        outcomes["refused"] += sum(isinstance(a, str) for a in (listing, harmless))
        assert token in ("not_found", "invalid_params")  # never the file
        assert {a for a in (listing, harmless) if isinstance(a, str)} <= {"invalid_params"}
        if isinstance(listing, dict):
            assert [e["name"] for e in listing["entries"]] == ["file.txt"]
    # Point 7: pi's export swapped for a link to server-token as soon as it appears.
    # Each try is a race of the watcher against the server's read: until one is won (a
    # loaded machine may take many tries; the deadline only ends a hopeless wait).
    exports = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "invalid_state" not in exports:
        exports.append(await answer_or_code(client.call("export_html", session_id=session_id)))
    answers += exports
    (session.cwd / "stop").write_text("")
    await eventually(
        lambda: (session.cwd / "race-count.txt").exists(),
        lambda: f"the race count; the race log: {race_log(session)}",
        timeout=20,
    )
    swaps, export_swaps = map(int, (session.cwd / "race-count.txt").read_text().split())
    assert swaps >= 300 and export_swaps >= 1, (swaps, export_swaps, exports)
    # The race was live: both what a directory and what a link answer were seen.
    assert outcomes["listed"] and outcomes["read"] and outcomes["refused"], outcomes
    everything = json.dumps(answers)
    for secret in SECRETS:
        assert secret not in everything
    # Refused when the watcher won (it always swaps, mostly after the server read).
    assert "invalid_state" in exports and export_swaps >= len(exports) - 1, exports
    assert all(e == "invalid_state" or "<html" in e["html"].lower() for e in exports), exports

    # Points 5 and 12: clone with settings.json a link, pi files linked, a FIFO among them.
    cloned = (await client.call("clone", session_id=session_id))["sessionId"]
    copy = server.sessions.sessions[cloned]
    # Not the source's (a link, not followed): the data dir's, as for any new session.
    settings = copy.agent_dir / "settings.json"
    assert not settings.is_symlink()
    assert settings.read_bytes() == (data_dir / "settings.json").read_bytes()
    names = [n for n in os.listdir(copy.pi_session_dir) if n.endswith(".jsonl")]
    assert len(names) == 1 and names[0] not in ("dotenv.jsonl", "environ.jsonl", "fifo.jsonl")
    copied = b"".join(files_under(copy.directory).values())
    for secret in SECRETS:
        assert secret.encode() not in copied
    # The copy's agent reads its own files: nothing of the server in them.
    fake_llm.script(
        Reply(
            labelled(
                "look", f"cat $PI_CODING_AGENT_DIR/settings.json {copy.pi_session_dir}/*; true"
            )
        ),
        Text("nothing there"),
    )
    await client.call("prompt", {"message": "look"}, session_id=cloned)
    await client.wait_for_event(is_event("agent_settled", cloned))
    seen = json.dumps(fake_llm.requests[-1])
    assert "look" in tool_results(fake_llm.requests[-1])
    for secret in SECRETS:
        assert secret not in seen

    # Both sessions go on; the server answers; the source repository is as it was.
    fake_llm.script(Text("still here"))
    # The clone attached the client to the copy: back to the original.
    await client.call("session.attach", session_id=session_id)
    last = client.event_frames(session_id)[-1]["seq"]
    await client.call("prompt", {"message": "and now?"}, session_id=session_id)
    await client.wait_for_event(
        lambda f: is_event("agent_settled", session_id)(f) and f["seq"] > last
    )
    assert (await client.call("session.files", session_id=session_id))["entries"]
    assert source_state(source) == before
    assert not [line for line in captured_log if "Traceback" in line]


@pytest_twisted.ensureDeferred
async def test_an_event_over_the_frame_limit_arrives_as_event_too_large(
    make_pi_server, fake_llm, captured_log
):
    """Point 13 for events: a 12 KiB answer's message_end, turn_end and agent_end under
    an 8 KiB frame limit; the seed's app decodes what it gets, nothing is dropped silently."""
    server = make_pi_server("--max-frame-size", "8192")
    app = SeedApp(reactor, server.port, TOKEN)
    await app.connect()
    session_id = await app.create_chat()
    fake_llm.script(Text("word " * 2500))
    await app.prompt("a long answer")
    await app.client.wait_for_event(is_event("agent_settled", session_id))
    frames = app.client.event_frames(session_id)
    replaced = {f["payload"]["eventType"]: f for f in frames if f["type"] == "event_too_large"}
    assert {"message_end", "agent_end"} <= set(replaced), [f["type"] for f in frames]
    for frame in replaced.values():
        assert frame["payload"]["limit"] == 8192 and frame["payload"]["size"] > 8192
    # Every seq arrived, the replaced ones too; the streamed deltas gave the text.
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert app.failures == [] and app.largest_frame <= 8192
    assert not [line for line in captured_log if "Traceback" in line]
    # The session goes on.
    fake_llm.script(Text("short"))
    await app.prompt("and a short one")
    await app.client.wait_for_event(
        lambda f: is_event("agent_settled", session_id)(f) and f["seq"] > seqs[-1]
    )


@pytest_twisted.ensureDeferred
async def test_a_fifo_as_the_checkouts_index_is_never_read(tmp_path, captured_log):
    """Point 14's FIFO index: the run-end snapshot, session.diff, session.commit (all, or
    what is staged) and the session's removal neither block on it nor raise a traceback."""
    source = make_repository(
        str(tmp_path / "source"), default_branch="main", files={"app.py": "x = 1\n"}
    )
    git = Git(reactor, env=git_env())
    branch = "pi/session-s1"
    session = local_session(tmp_path, source, branch, local_clone=False)
    make_old_worktree(source, str(session.cwd), branch)
    (session.cwd / "app.py").write_text("x = 2\n")
    index = run_git("rev-parse", "--path-format=absolute", "--git-path", "index", cwd=session.cwd)
    os.unlink(index.strip())
    os.mkfifo(index.strip())
    events = []
    snapshots, shipping = make_shipping(git, events)
    await snapshots.run_ended(session)
    assert [f["path"] for f in (await snapshots.diff(session))["files"]] == ["app.py"]
    try:
        await shipping.commit(session, "only what is staged", everything=False)
    except InvalidState as nothing:
        assert "nothing is staged" in nothing.message
    committed = await shipping.commit(session, "everything")
    assert run_git("show", f"{committed['commit']}:app.py", cwd=source) == "x = 2\n"
    assert [e["type"] for e in events if e["type"] == "files_changed"] == ["files_changed"]
    await git.worktree_remove(source, str(session.cwd))
    assert not [line for line in captured_log if "Traceback" in line]
