"""
How an agent process is started: the ``Launcher`` interface and the local one.

The supervisor decides *what* runs (pi's argv, its working directory, its
environment, the session it serves); a launcher decides *how*: as a plain child
process (``LocalLauncher``), inside a bubblewrap sandbox (``launchers.bwrap``)
or behind an operator's command prefix (``launchers.template``: docker, kubectl
exec, ssh).  Whatever it does, the process's stdin and stdout are pi's RPC
channel, and the transport it returns is the one the agent protocol talks to.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from typing import Protocol

import attr
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol

from piserver.common.processes import Confine


@attr.frozen
class SessionFiles:
    """What one agent may see of the server's files, for launchers that confine it.

    ``directory`` is the session's own directory (``sessions/<id>``: visible read-only,
    so files the server rewrites there, such as the native tools declarations, stay
    current); ``writable`` the directories the agent writes (its working directory, pi's
    session dir, its agent dir); ``readable`` further files and directories it reads (the
    bundled extension, the data dir's pi configuration its agent dir links to); ``cache``
    a directory of the session's own where the agent may keep what it compiles from one
    start to the next (made when needed); ``repository`` the local repository a
    checkout was cloned from (its objects are shown read-only; see ``bwrap.git_binds``).
    """

    directory: str
    writable: tuple[str, ...]
    readable: tuple[str, ...] = ()
    cache: str | None = None
    repository: str | None = None


@attr.frozen
class AgentLaunch:
    """One agent to start.

    ``key`` names it (a session id, or the models helper's key); ``executable`` is the
    absolute path of ``argv[0]``; ``files`` is None for an agent that serves no session.
    """

    key: str
    executable: str
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str]
    files: SessionFiles | None = None


class Launcher(Protocol):
    """Starts agent processes.  ``description`` names it in the log."""

    description: str

    def launch(self, protocol: ProcessProtocol, launch: AgentLaunch) -> IProcessTransport:
        """Start ``launch`` connected to ``protocol`` (stdin, stdout, stderr) and return
        its transport; raise OSError when it cannot be started."""

    def one_shot(self, files: SessionFiles, cwd: str, writable: Sequence[str]) -> Confine | None:
        """How the server runs one command of its own on a session's files as the
        session's agent would be confined (its files, plus ``writable``: directories of
        the server's that command writes), with no network and no secret in its
        environment; None when this launcher runs it as the server, unconfined."""


class LocalLauncher:
    """The agent as a child process of the server, with the server's own rights.

    With ``own_process_group`` (and ``setsid`` on the PATH) each agent leads a process
    group of its own, so that stopping it stops what it started too (shells, tools),
    and a terminal's signals reach the server only: ``leads_process_group`` tells the
    supervisor it may signal the group.
    """

    description = "local processes (no sandbox)"

    def __init__(self, reactor, own_process_group: bool = False) -> None:
        self._reactor = reactor
        self._setsid = shutil.which("setsid") if own_process_group else None
        self.leads_process_group = self._setsid is not None

    def one_shot(self, files: SessionFiles, cwd: str, writable: Sequence[str]) -> None:
        return None  # nothing confines the agent either

    def launch(self, protocol: ProcessProtocol, launch: AgentLaunch) -> IProcessTransport:
        executable, argv = launch.executable, list(launch.argv)
        if self._setsid is not None:
            # setsid execs pi in its own place: the agent's pid leads the new group.
            executable, argv = self._setsid, [self._setsid, executable, *argv[1:]]
        return self._reactor.spawnProcess(
            protocol, executable, argv, env=dict(launch.env), path=launch.cwd
        )
