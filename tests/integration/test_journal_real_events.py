"""The journal with pi's real event streams, and with a writer killed at random moments."""

import json
import random
import signal
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from piserver.sessions.journal import Journal, JournalLimits
from piserver.sessions.journalcodec import strip_message_update
from tests.support import events
from tests.support.events.journal_writer import LIMITS as WRITER_LIMITS
from tests.support.piagent import repository_root


def same_json(left: bytes, right: bytes) -> bool:
    """Equal JSON with the same key order and the same types."""
    return json.dumps(json.loads(left)) == json.dumps(json.loads(right))


async def record(scenario, spawn_pi_rpc, fake_llm, agent_dir) -> list[bytes]:
    pi = spawn_pi_rpc("--no-session")
    lines = events.RawLines(pi)
    await scenario(pi, fake_llm, agent_dir)
    return lines.events()


def journal_everything(directory, stream: list[bytes]) -> Journal:
    from twisted.internet import reactor

    journal = Journal(directory, reactor, JournalLimits())
    journal.open()
    for seq, line in enumerate(stream, 1):
        payload = json.loads(line)
        journal.append(seq, payload["type"], payload, line)
    return journal


def assert_replays_exactly(journal: Journal, stream: list[bytes]) -> list[bytes]:
    """Check both replay modes against pi's lines; returns the delta-mode payloads."""
    full = journal.replay(0)
    delta = journal.replay(0, "delta")
    assert [seq for seq, _, _ in full] == list(range(1, len(stream) + 1))
    assert [seq for seq, _, _ in delta] == list(range(1, len(stream) + 1))
    for line, (seq, event_type, replayed), (_, _, stripped) in zip(
        stream, full, delta, strict=True
    ):
        original = json.loads(line)
        assert event_type == original["type"]
        assert same_json(replayed, line), seq
        if event_type == "message_update":
            assert json.dumps(json.loads(stripped)) == json.dumps(strip_message_update(original))
        else:
            assert replayed == stripped == line
    return [stripped for _, _, stripped in delta]


@pytest_twisted.ensureDeferred
async def test_a_long_answer_is_journaled_near_its_delta_size(
    spawn_pi_rpc, fake_llm, agent_dir, tmp_path
):
    stream = await record(events.long_answer, spawn_pi_rpc, fake_llm, agent_dir)
    journal = journal_everything(tmp_path / "journal", stream)

    delta = assert_replays_exactly(journal, stream)

    updates = [line for line in stream if json.loads(line)["type"] == "message_update"]
    assert len(updates) > 2000
    full_size = sum(len(line) for line in stream)
    delta_size = sum(len(payload) for payload in delta)
    # pi 1.x streams deltas only (0.x repeated the whole message twice: 30 MB here); the
    # journal keeps its updates as they came, for little more than pi's own bytes.
    assert full_size < 2_000_000
    assert journal.disk_bytes <= 3 * delta_size
    assert journal.disk_bytes < full_size * 1.25
    journal.close()


@pytest.mark.parametrize("scenario", [events.text_and_tools, events.aborted])
@pytest_twisted.ensureDeferred
async def test_pi_streams_replay_exactly(spawn_pi_rpc, fake_llm, agent_dir, tmp_path, scenario):
    stream = await record(scenario, spawn_pi_rpc, fake_llm, agent_dir)
    journal = journal_everything(tmp_path / "journal", stream)

    assert_replays_exactly(journal, stream)

    types = [json.loads(line)["type"] for line in stream]
    assert types[-2:] == ["agent_end", "agent_settled"]
    assert "message_update" in types
    journal.close()
    reopened = Journal(tmp_path / "journal", Clock(), JournalLimits())
    reopened.open()
    assert reopened.last_seq == len(stream)
    assert_replays_exactly(reopened, stream)
    reopened.close()


def test_kill_9_at_random_moments_loses_no_written_event(tmp_path):
    directory = tmp_path / "journal"
    chosen = random.Random(20261124)
    printed = 0
    for _ in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests.support.events.journal_writer", str(directory)],
            cwd=repository_root(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            opened = writer.stdout.readline()
            assert opened.startswith(b"opened "), writer.stderr.read()
            assert int(opened.split()[1]) >= printed
            for _ in range(chosen.randint(1, 600)):
                line = writer.stdout.readline()
                assert line, writer.stderr.read()
                printed = int(line)
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            writer.stdout.close()
            writer.stderr.close()

        journal = Journal(directory, Clock(), WRITER_LIMITS)
        journal.open()
        assert journal.last_seq >= printed
        assert journal.last_seq - journal.first_seq + 1 <= WRITER_LIMITS.max_events
        replayed = journal.replay(journal.first_seq - 1)
        assert [seq for seq, _, _ in replayed] == list(
            range(journal.first_seq, journal.last_seq + 1)
        )
        for seq, event_type, payload_json in replayed:
            expected_type, expected = events.synthetic_event(seq)
            assert event_type == expected_type
            assert json.dumps(json.loads(payload_json)) == json.dumps(expected)
        journal.close()
    assert printed > 600
