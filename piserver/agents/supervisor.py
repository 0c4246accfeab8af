"""
The service that owns every ``pi --mode rpc`` process.

It starts agents with the right environment (pi's agent dir, no version
check, none of the server's secrets) and stops them politely, then less so:
``abort``, end of stdin (pi shuts down at end of input), SIGTERM after a grace
period, SIGKILL after another.  Restart policy belongs to the sessions layer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Mapping

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from piserver.agents.launchers import AgentLaunch, Launcher, LocalLauncher, SessionFiles
from piserver.agents.protocol import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_MAX_LINE_BYTES,
    AgentExit,
    AgentProtocol,
    EventCallback,
)
from piserver.common.errors import AgentExited, InvalidState
from piserver.common.processes import TermThenKill, signal_group

log = Logger()

DEFAULT_STARTUP_TIMEOUT = 30.0
DEFAULT_ABORT_TIMEOUT = 1.0
DEFAULT_TERM_GRACE = 3.0
DEFAULT_KILL_GRACE = 3.0


class AgentSupervisor(service.Service):
    """Spawns, tracks and stops agent processes, one per key (a session id).

    ``reactor`` provides IReactorProcess and IReactorTime.  ``pi_command`` is
    the argv prefix that runs pi (``["/path/pi"]`` or ``["node", "cli.js"]``;
    a bare first word is looked up on the PATH of ``base_env``).  ``agent_dir``
    becomes ``PI_CODING_AGENT_DIR``.  ``base_env`` is the agent's environment
    (server env plus ``.env``) from which every name in ``forbidden_env`` is
    removed.  ``launcher`` starts the processes (a ``LocalLauncher`` unless
    given: see piserver/agents/launchers).  With the default timings a stop takes at most
    ``abort_timeout + term_grace + kill_grace`` = 7 s.
    """

    name = "agents"

    def __init__(
        self,
        reactor,
        pi_command: list[str],
        agent_dir: str,
        base_env: Mapping[str, str],
        forbidden_env: Collection[str],
        *,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        abort_timeout: float = DEFAULT_ABORT_TIMEOUT,
        term_grace: float = DEFAULT_TERM_GRACE,
        kill_grace: float = DEFAULT_KILL_GRACE,
        max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES,
        launcher: Launcher | None = None,
        probe_interval: float | None = None,
    ) -> None:
        if not pi_command:
            raise ValueError("pi_command is empty")
        executable = pi_command[0]
        if os.sep not in executable:
            found = shutil.which(executable, path=base_env.get("PATH", os.defpath))
            if found is None:
                raise ValueError(f"{executable!r} not found on PATH")
            executable = found
        self._reactor = reactor
        self._launcher = launcher if launcher is not None else LocalLauncher(reactor)
        self._executable = executable
        self._pi_argv = list(pi_command)
        forbidden = set(forbidden_env)
        self._env = {name: value for name, value in base_env.items() if name not in forbidden}
        self._env["PI_CODING_AGENT_DIR"] = agent_dir
        self._env["PI_SKIP_VERSION_CHECK"] = "1"
        self._command_timeout = command_timeout
        self._startup_timeout = startup_timeout
        self._abort_timeout = abort_timeout
        self._term_grace = term_grace
        self._kill_grace = kill_grace
        self._max_line_bytes = max_line_bytes
        self._probe_interval = probe_interval
        # Where the launcher makes each agent lead a process group of its own, stopping it
        # stops what it started too (shells, tools).
        self._group_kill = getattr(self._launcher, "leads_process_group", False)
        self._agents: dict[str, AgentProtocol] = {}
        self._shutting_down = False

    def spawn(
        self,
        key: str,
        args: list[str],
        cwd: str,
        on_event: EventCallback,
        agent_dir: str | None = None,
        files: SessionFiles | None = None,
    ) -> AgentProtocol:
        """Start ``pi --mode rpc *args`` in ``cwd`` for ``key`` and return its protocol at once.
        ``agent_dir``, when given, is its ``PI_CODING_AGENT_DIR`` instead of the shared one;
        ``files`` what of the server's files a sandboxing launcher lets it see.

        The start-up ``get_state`` is already sent: ``agent.ready`` fires with
        its data, or fails (an agent that doesn't answer within the start-up
        timeout is stopped).  ``agent.exited`` tells the owner when it ends;
        the key is free again by then.  Raises ``ValueError`` if ``key``
        still has a live agent (wait for ``stop()`` first), ``InvalidState``
        while the service is shutting down.
        """
        if self._shutting_down:
            raise InvalidState("the server is shutting down")
        if key in self._agents:
            raise ValueError(f"an agent is already running for {key!r}")
        agent = AgentProtocol(
            key,
            self._reactor,
            on_event,
            command_timeout=self._command_timeout,
            max_line_bytes=self._max_line_bytes,
            probe_interval=self._probe_interval,
            on_hung=self._hung,
        )
        argv = [*self._pi_argv, "--mode", "rpc", *args]
        env = dict(self._env)
        if agent_dir is not None:
            env["PI_CODING_AGENT_DIR"] = agent_dir
        self._launcher.launch(
            agent,
            AgentLaunch(
                key=key,
                executable=self._executable,
                argv=tuple(argv),
                cwd=cwd,
                env=env,
                files=files,
            ),
        )
        self._agents[key] = agent
        log.info(
            "agent {agent_key} started pid={pid} cwd={cwd}", agent_key=key, pid=agent.pid, cwd=cwd
        )
        agent.exited.addCallback(self._forget, key, agent)
        agent.handshake(self._startup_timeout).addErrback(self._start_failed, agent)
        return agent

    def stop(self, target: str | AgentProtocol) -> defer.Deferred:
        """Stop an agent (by key or protocol); fires with its ``AgentExit`` once it has ended.

        Fires with None for an unknown key.  Calling it again while the agent
        is stopping, or after, just waits for (or returns) the same exit.
        """
        agent = self._agents.get(target) if isinstance(target, str) else target
        if agent is None:
            return defer.succeed(None)
        if agent.exit is None and not agent.stop_requested:
            agent.stop_requested = True
            log.info("stopping agent {agent_key}", agent_key=agent.key)
            aborted = agent.command("abort", timeout=self._abort_timeout)
            aborted.addErrback(lambda _: None)
            aborted.addCallback(lambda _: self._close_and_escalate(agent))
        return agent.exited

    def kill(self, agent: AgentProtocol) -> defer.Deferred:
        """Stop ``agent`` at once: SIGKILL, no ``abort`` and no grace (one that does not
        answer ``abort``). Its exit counts as asked for, not as a crash."""
        if agent.exit is None:
            agent.stop_requested = True
            log.info("killing agent {agent_key}", agent_key=agent.key)
            self._signal(agent, "KILL")
        return agent.exited

    def startService(self) -> None:
        self._shutting_down = False
        super().startService()

    def stopService(self) -> defer.Deferred:
        """Stop every agent at once; fires when all have ended."""
        self._shutting_down = True
        super().stopService()
        stopping = [self.stop(agent) for agent in list(self._agents.values())]
        done = defer.gatherResults(stopping, consumeErrors=True)
        done.addCallback(lambda _: None)
        return done

    def _close_and_escalate(self, agent: AgentProtocol) -> None:
        if agent.exit is not None:
            return
        agent.close_stdin()

        def send(signal_name: str) -> None:
            log.warn(
                "agent {agent_key} still running, sending SIG{signal_name}",
                agent_key=agent.key,
                signal_name=signal_name,
            )
            self._signal(agent, signal_name)

        stopping = TermThenKill(self._reactor, send, self._term_grace, self._kill_grace)

        def cancel_timers(exit: AgentExit) -> AgentExit:
            stopping.cancel()
            return exit

        agent.exited.addCallback(cancel_timers)

    def _signal(self, agent: AgentProtocol, signal_name: str) -> None:
        """Signal the agent's whole process group when it has one, else the agent."""
        if self._group_kill and agent.exit is None:
            signal_group(agent.pid, signal_name, agent.signal)
        else:
            agent.signal(signal_name)

    def _hung(self, agent: AgentProtocol) -> None:
        # Nothing polite reaches a process that does not run: kill it (its exit is a crash).
        self._signal(agent, "KILL")

    def _forget(self, exit: AgentExit, key: str, agent: AgentProtocol) -> AgentExit:
        if self._agents.get(key) is agent:
            del self._agents[key]
        if self._group_kill:
            # What the agent started and left behind (a shell, a tool) goes with it.
            signal_group(agent.pid, "KILL", lambda name: None)
        return exit

    def _start_failed(self, failure: Failure, agent: AgentProtocol) -> None:
        if failure.check(AgentExited):
            return  # its exit is logged and reported through ``exited``
        log.error(
            "agent {agent_key} did not start: {error}",
            agent_key=agent.key,
            error=failure.getErrorMessage(),
        )
        self.stop(agent)
