"""
Idle sessions cost nothing: many chat sessions created and prompted once on a
real pi-server (in a process of its own, with the real pi and the scripted LLM),
one client each, then the clients gone and the sessions left idle past a short
``--agent-idle-timeout``.

The server's resident memory (``VmRSS``) is read from ``/proc`` just after it
starts (the fresh server), once every session has answered, once it holds no pi
process any more (its descendants in ``/proc``, polled with a deadline: the
idle sweep runs every ``min(60, timeout)`` seconds) and after some sessions
were resumed. A resumed session is attached and prompted again; its
``get_messages`` must hold both turns.
"""

import json
import time
from pathlib import Path

from twisted.internet import task

from tests.support.fakellm import Tokens

from . import report
from .realpi import Setup
from .report import Table
from .rig import TOKEN, median
from .wsclient import connect

IDLE_TIMEOUT = 2.0
ANSWER = Tokens(3)
# Longest wait for the agents to stop once the client is gone, past the timeout.
STOP_DEADLINE = 60.0


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _rss_if_running(pid: int) -> int:
    try:
        return rss_bytes(pid)
    except (OSError, RuntimeError):
        return 0  # ended meanwhile (a zombie has no VmRSS)


def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (its agents, and anything they started)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


async def poll_until(reactor, predicate, deadline: float, what: str) -> float:
    """Seconds until ``predicate()`` holds, checked every 50 ms; fails past ``deadline``."""
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > deadline:
            raise RuntimeError(f"{what}: not within {deadline:g} s")
        await task.deferLater(reactor, 0.05)
    return time.perf_counter() - started


def first_turn(number: int) -> str:
    return f"first turn of idle session {number}"


def second_turn(number: int) -> str:
    return f"second turn of idle session {number}"


async def prompted(setup: Setup, client, session_id: str, message: str) -> float:
    """Seconds from the prompt sent to its run's ``agent_settled``."""
    await setup.llm.script(ANSWER)
    settled = client.until_type("agent_settled")
    started = time.perf_counter()
    await client.call("prompt", {"message": message}, session_id=session_id)
    return await settled - started


async def measure(reactor, work: Path, pi, environ: dict, sessions: int, resumed: int):
    """Returns (table, figures)."""
    setup = await Setup(reactor, work, pi, environ).start()
    try:
        server = await setup.start_server(
            # Room for every session's agent (and a warm one), so that only idleness stops them.
            ["--agent-idle-timeout", str(IDLE_TIMEOUT), "--max-agents", str(sessions + 2)]
        )
        try:
            return await _measure(reactor, setup, server, sessions, resumed)
        finally:
            await server.stop()
    finally:
        await setup.stop()


async def _measure(reactor, setup: Setup, server, sessions: int, resumed: int):
    fresh = rss_bytes(server.pid)
    # A client per session, as many phones would be: a connection is attached to the
    # session it created last, and a session nobody is attached to is idle already.
    clients, ids, creates = [], [], []
    for number in range(sessions):
        client = await connect(reactor, server.port, TOKEN, "delta")
        clients.append(client)
        started = time.perf_counter()
        created = await client.call("session.create", {"mode": "chat"})
        creates.append(time.perf_counter() - started)
        ids.append(created["sessionId"])
        await prompted(setup, client, created["sessionId"], first_turn(number))
    busy = (rss_bytes(server.pid), len(descendants(server.pid)))
    agents_rss = sum(map(_rss_if_running, descendants(server.pid)))
    for client in clients:
        await client.close()
    waited = await poll_until(
        reactor,
        lambda: not descendants(server.pid),
        IDLE_TIMEOUT + STOP_DEADLINE,
        "the idle agents to stop",
    )
    idle = (rss_bytes(server.pid), len(descendants(server.pid)))

    client = await connect(reactor, server.port, TOKEN, "delta")
    picked = list(range(0, sessions, max(1, sessions // resumed)))[:resumed]
    resumes, kept = [], 0
    for number in picked:
        session_id = ids[number]
        started = time.perf_counter()
        await client.call("session.attach", {"sessionId": session_id, "exclusive": False})
        attached = time.perf_counter() - started
        resumes.append(attached + await prompted(setup, client, session_id, second_turn(number)))
        history = json.dumps((await client.call("get_messages", session_id=session_id))["messages"])
        kept += first_turn(number) in history and second_turn(number) in history
    after = (rss_bytes(server.pid), len(descendants(server.pid)))
    await client.close()

    figures = {
        "sessions": sessions,
        "fresh_rss": fresh,
        "busy": busy,
        "agents_rss": agents_rss,
        "idle": idle,
        "resumed": after,
        "waited": waited,
        "create": median(creates),
        "resume": median(resumes),
        "resumed_count": len(picked),
        "kept": kept,
    }

    def row(label, state):
        rss, processes = state
        return (label, processes, report.size(rss), f"{(rss - fresh) / 1e6:+.1f} MB")

    table = Table(
        title=f"Idle sessions: {sessions} chat sessions prompted once, then left alone",
        columns=("Server state", "Processes under it", "Server RSS", "vs fresh"),
        rows=(
            ("fresh (started, no session)", 0, report.size(fresh), ""),
            row(f"{sessions} sessions, each answered once, their clients attached", busy),
            row(f"clients gone, idle past --agent-idle-timeout {IDLE_TIMEOUT:g}", idle),
            row(f"{len(picked)} of them resumed and prompted again", after),
        ),
        notes=(
            f"Every agent was stopped {waited:.1f} s after the clients left (the idle sweep "
            f"runs every {min(60.0, IDLE_TIMEOUT):g} s); before, the processes under the "
            f"server held {report.size(agents_rss)} between them. `session.create` p50 "
            f"{report.duration(median(creates))} (a cold pi each); a resume (attach, then "
            f"a prompt to its `agent_settled`) p50 {report.duration(median(resumes))}; "
            f"{kept} of {len(picked)} resumed sessions had both turns in `get_messages`.",
            "RSS is `VmRSS` of the pi-server process; processes are its descendants in "
            "`/proc`: with the default `--sandbox bwrap` an agent is three (bwrap, the init "
            "of its PID namespace, pi).",
        ),
    )
    return table, figures
