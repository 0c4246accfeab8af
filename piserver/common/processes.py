"""
Child processes that lead a process group of their own (git with its transport helpers,
an agent with the shell and tools it started): signalled as a group, and stopped with
SIGTERM, then SIGKILL if they are still there after a grace period; the short
checks run at start; and how a launcher confines a one-shot command (``Confine``).
"""

import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence

from twisted.internet.interfaces import IReactorTime

# ``confine(program, env) -> (argv prefix, env)``: how to start ``program`` inside a
# sandbox (the prefix ends with the program) and the environment it gets there; made
# by a launcher (``agents.launchers``), used by the server's git (``repos.git``).
Confine = Callable[[str, Mapping[str, str]], tuple[list[str], dict[str, str]]]


def signal_group(pid: int | None, name: str, fallback: Callable[[str], None]) -> None:
    """Send ``SIG<name>`` to the process group that ``pid`` leads; when there is no such
    group (it is gone, or never was), to the process alone with ``fallback(name)``."""
    if pid:
        try:
            os.killpg(pid, getattr(signal, f"SIG{name}"))
            return
        except (ProcessLookupError, PermissionError, TypeError):
            pass
    fallback(name)


def run_probe(
    argv: Sequence[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Run a short check at start (``pi --version``, a trivial sandbox), before the
    reactor runs: its output captured, no stdin, ``subprocess.TimeoutExpired`` after
    ``timeout`` seconds."""
    return subprocess.run(
        list(argv),
        env=dict(env),
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


class TermThenKill:
    """``send("TERM")`` in ``term_after`` seconds and ``send("KILL")`` ``kill_grace``
    seconds after that, unless ``cancel()`` (the process ended) comes first."""

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[str], None],
        term_after: float,
        kill_grace: float,
    ) -> None:
        self._timers = [
            clock.callLater(term_after, send, "TERM"),
            clock.callLater(term_after + kill_grace, send, "KILL"),
        ]

    def cancel(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
