"""
A full disk (a small tmpfs under the sessions) while a session streams: what
was journaled is kept, journaling stops with one log line, attached clients are
told, and a request that must write is answered ``storage_full``.
"""

import os
import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from tests.support.fakellm import Text, Tokens
from tests.support.wsclient import CallFailed

SAFETY_NET = 60.0


@pytest.fixture
def small_sessions_disk(agent_dir):
    sessions = agent_dir.path / "sessions"
    sessions.mkdir(mode=0o700, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(sessions)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield sessions
    subprocess.run(["umount", "-l", str(sessions)], check=True)


def fill(directory) -> None:
    """Take every free byte of ``directory``'s file system."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        for size in (65536, 1):
            try:
                while True:
                    filler.write(b"\0" * size)
            except OSError:
                pass


def is_event(event_type, session_id):
    return lambda f: f.get("type") == event_type and f.get("sessionId") == session_id


@pytest_twisted.ensureDeferred
async def test_a_full_disk_stops_journaling_keeps_the_journal_and_says_so(
    small_sessions_disk, make_pi_server, fake_llm
):
    # No warm agent: one starting or ending on the full disk would free or take its bytes.
    pi_server = make_pi_server("--warm-agents", "0")
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        fake_llm.script(Text("a first answer that is journaled"), Tokens(300))
        client = await pi_server.client()
        session_id = (await client.call("session.create", {"mode": "chat"}))["sessionId"]
        await client.call("prompt", {"message": "one"}, session_id=session_id)
        await client.wait_for_event(is_event("agent_settled", session_id)).addTimeout(
            SAFETY_NET, reactor
        )
        journal = small_sessions_disk / session_id / "journal"
        kept = {path.name: path.stat().st_size for path in journal.iterdir()}
        assert kept

        fill(small_sessions_disk)
        await client.call("prompt", {"message": "two"}, session_id=session_id)
        stopped = await client.wait_for_event(is_event("journal_stopped", session_id)).addTimeout(
            SAFETY_NET, reactor
        )
        assert stopped["payload"]["reason"] == os.strerror(28)
        # The live stream goes on to the end of the run (pi 1.6 ends one with agent_settled).
        await client.wait_for_event(
            lambda f: (
                f.get("sessionId") == session_id
                and f["seq"] > stopped["seq"]
                and f["type"] in ("agent_settled", "agent_exit")
            )
        ).addTimeout(SAFETY_NET, reactor)

        # Nothing already written was deleted.
        for name, size in kept.items():
            assert (journal / name).stat().st_size >= size
        # One line about it, no traceback per event.
        texts = [e.get("log_format", "") for e in logged]
        assert sum("no longer journaled" in text for text in texts) == 1
        assert not any(e.get("log_failure") is not None for e in logged)

        with pytest.raises(CallFailed) as refused:
            await client.call("session.create", {"mode": "chat"})
        assert refused.value.code == "storage_full"
    finally:
        globalLogPublisher.removeObserver(logged.append)
        (small_sessions_disk / "filler").unlink(missing_ok=True)
