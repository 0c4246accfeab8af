"""common.processes: TERM then KILL on a clock, cancelled by the exit; group signals that
fall back to the process alone."""

import os
import signal
import subprocess

from twisted.internet.task import Clock

from piserver.common.processes import TermThenKill, signal_group


def test_term_then_kill_after_the_grace_unless_cancelled():
    clock, sent = Clock(), []
    TermThenKill(clock, sent.append, term_after=5, kill_grace=2)
    clock.advance(4.9)
    assert sent == []
    clock.advance(0.1)
    assert sent == ["TERM"]
    clock.advance(2)
    assert sent == ["TERM", "KILL"]
    stopping = TermThenKill(clock, sent.append, term_after=5, kill_grace=2)
    clock.advance(5)
    stopping.cancel()
    clock.advance(10)
    assert sent == ["TERM", "KILL", "TERM"]


def test_a_group_is_signalled_whole_and_a_missing_one_falls_back():
    fallback = []
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        signal_group(child.pid, "TERM", fallback.append)
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert fallback == []
    signal_group(child.pid, "TERM", fallback.append)  # the group is gone now
    signal_group(None, "KILL", fallback.append)  # never had one
    assert fallback == ["TERM", "KILL"]
