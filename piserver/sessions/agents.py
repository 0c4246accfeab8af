"""
The sessions' pi processes: what each is started with, room under ``--max-agents``,
stopping idle ones, and what a crash means to a session's clients.

When a session's agent starts or stops is its ``AgentLifecycle``'s business
(``lifecycle.py``); this module is the host every lifecycle asks to act. Agents started
ahead of any session are the ``WarmAgents`` pool's (``warm.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from piserver.agents import agentdir
from piserver.agents.gate import permission_args, write_mode_file
from piserver.agents.launchers import SessionFiles
from piserver.agents.nativetools import EXTENSION_PATH, extension_args
from piserver.agents.protocol import AgentExit, AgentProtocol
from piserver.common.errors import TooManySessions
from piserver.sessions.lifecycle import AgentLifecycle, AgentStatus
from piserver.sessions.observer import ISessionObserver
from piserver.sessions.session import Session

DEFAULT_MAX_AGENTS = 16
DEFAULT_IDLE_TIMEOUT = 30 * 60.0


class _Host:
    """One session's side of its lifecycle (see lifecycle.AgentHost)."""

    def __init__(self, agents: SessionAgents, session: Session) -> None:
        self._agents = agents
        self._session = session

    async def prepare(self) -> None:
        await self._agents.prepare(self._session)

    def spawn(self) -> AgentProtocol:
        return self._agents.spawn(self._session)

    def started(self, agent: AgentProtocol, state: dict | None) -> None:
        self._agents.started(self._session, state)

    def stop(self, agent: AgentProtocol) -> defer.Deferred:
        return self._agents.supervisor.stop(agent)

    def restarting(self, delay: float) -> None:
        self._agents.restarting(self._session, delay)

    def crashed(self, agent: AgentProtocol, exit: AgentExit) -> None:
        self._agents.crashed(self._session, agent, exit)


class AgentsHost(Protocol):
    """What ``SessionAgents`` asks of the session manager."""

    def registered(self) -> Iterable[Session]:
        """The sessions in the registry (not the warm pool's)."""

    def publish(
        self, session: Session, event_type: str, payload: dict, payload_json=None, to=None
    ) -> None:
        """Number, journal and send an event of ``session``."""

    def save(self, session: Session) -> None:
        """Write the session's record."""

    def agent_event(self, session: Session, agent: AgentProtocol, event: dict, raw: bytes):
        """``agent``, the process of ``session``, wrote ``event``."""


class SessionAgents:
    """
    ``supervisor`` spawns and stops the processes; ``host`` (an ``AgentsHost``, the
    session manager) holds the sessions; ``observer`` (an ``ISessionObserver``) hears of
    restarts.
    """

    log = Logger()

    def __init__(
        self,
        clock,
        data_dir: Path,
        supervisor,
        host: AgentsHost,
        observer: ISessionObserver,
        max_agents: int = DEFAULT_MAX_AGENTS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._data_dir = data_dir
        self.supervisor = supervisor
        self._host = host
        self._observer = observer
        self.max_agents = max_agents
        self.idle_timeout = idle_timeout
        # Sessions whose agent is being stopped to make room for one starting.
        self._freeing_for_start: set[str] = set()
        # The warm pool (warm.WarmAgents), when there is one: its agents count against
        # --max-agents and are the first to go.
        self.warm = None

    def equip(self, session: Session) -> None:
        session.lifecycle = AgentLifecycle(session.id, self._clock, _Host(self, session))

    # -- what an agent is started with ---------------------------------------

    def args(self, session: Session) -> list[str]:
        # --continue picks the newest pi session file in the session's own dir, so a
        # restarted agent resumes the conversation (and a fresh one starts a new file).
        args = ["--session-dir", str(session.pi_session_dir), "--continue"]
        if session.provider is not None:
            args += ["--provider", session.provider, "--model", session.model_id]
        if session.mode == "chat":
            args.append("--no-builtin-tools")
        # The system prompt and native tools come through the extension, before each run:
        # an agent started ahead (warm) takes them on when it is handed its session.
        args += extension_args(
            session.system_prompt_file,
            session.native_tools_file if session.offers_native_tools else None,
        )
        args += permission_args(session.permission_file)
        # The folder's own pi configuration: the server's decision (projecttrust.py).
        args += session.trust.agent_args()
        return args

    def files(self, session: Session) -> SessionFiles:
        """What of the server's files the session's agent may see (when sandboxed)."""
        return SessionFiles(
            directory=str(session.directory),
            writable=(str(session.cwd), str(session.pi_session_dir), str(session.agent_dir)),
            readable=(
                str(EXTENSION_PATH.parent),
                *(str(path) for path in agentdir.shared_paths(self._data_dir)),
            ),
            cache=str(session.directory / "cache"),
            # A local repository's worktree needs its git dir (a clone has its own).
            repository=session.checkout.repo_path if session.checkout is not None else None,
        )

    # -- the host side of every lifecycle -------------------------------------

    async def prepare(self, session: Session) -> None:
        await self._make_room(session)
        session.last_used = self._clock.seconds()
        agentdir.prepare(self._data_dir, session.agent_dir)
        # The gate reads it at every tool call; a session older than modes gets one too.
        write_mode_file(session.permission_file, session.permissions.mode)

    def spawn(self, session: Session) -> AgentProtocol:
        session.streaming = False
        agent = self.supervisor.spawn(
            session.id,
            self.args(session),
            str(session.cwd),
            lambda event, raw: self._host.agent_event(session, agent, event, raw),
            agent_dir=str(session.agent_dir),
            files=self.files(session),
        )
        # Its pending approvals can no longer be answered through it (approvals.py).
        agent.exited.addCallback(lambda _: session.approvals.agent_exited())
        return agent

    def started(self, session: Session, state: dict | None) -> None:
        session.trust.agent_started()
        model = (state or {}).get("model") or {}
        if session.provider is None and model.get("provider") and model.get("id"):
            # pi's default model lives in the shared settings.json, which a set_model in any
            # session changes: pin this session's model so restarts keep it.
            session.provider, session.model_id = model["provider"], model["id"]
            self._host.save(session)

    def restart(self, session: Session) -> None:
        """Stop a running agent and start it again (it resumes the conversation): for
        what it reads only at start."""
        status = session.lifecycle.status
        if status is AgentStatus.STARTING:
            # Started with what was decided before: once it runs, again.
            session.lifecycle.want().addCallbacks(lambda _: self.restart(session), lambda _: None)
            return
        if status is not AgentStatus.RUNNING:
            return  # the next start reads it anyway
        session.lifecycle.stop()
        session.lifecycle.want().addErrback(
            lambda f: self.log.error(
                "the agent of {session_id} did not restart: {error}",
                session_id=session.id,
                error=f.getErrorMessage(),
            )
        )

    def restarting(self, session: Session, delay: float) -> None:
        self.log.info(
            "restarting the agent of {session_id} in {delay} s", session_id=session.id, delay=delay
        )
        self._observer.agent_restarted(session)

    def crashed(self, session: Session, agent: AgentProtocol, exit: AgentExit) -> None:
        session.calls.agent_exited()
        if agent.hung:
            self._host.publish(
                session,
                "agent_hung",
                {
                    "type": "agent_hung",
                    "message": "the agent stopped answering and was killed; it restarts",
                },
            )
        if session.streaming:
            # The run ends here for the client as it would have: agent_end, agent_settled.
            session.streaming = False
            error = {"code": "agent_exited", "message": exit.describe()}
            self._host.publish(
                session,
                "agent_end",
                {"type": "agent_end", "messages": [], "success": False, "error": error},
            )
            self._host.publish(
                session,
                "agent_settled",
                {"type": "agent_settled", "aborted": False, "error": error},
            )
        self._host.publish(
            session,
            "agent_exit",
            {
                "type": "agent_exit",
                "code": exit.code,
                "signal": exit.signal,
                "stderrTail": exit.stderr_tail,
            },
        )
        if agent.hung and session.stream.connections():
            # Someone is waiting for this session: bring its conversation back at once.
            session.lifecycle.want().addErrback(
                lambda f: self.log.error(
                    "the agent of {session_id} did not restart: {error}",
                    session_id=session.id,
                    error=f.getErrorMessage(),
                )
            )

    # -- room, idleness -------------------------------------------------------

    def _holding_places(self, starting: Session | None) -> list[Session]:
        sessions = list(self._host.registered())
        if self.warm is not None:
            sessions += self.warm.sessions()
        return [
            s
            for s in sessions
            if s is not starting
            and s.id not in self._freeing_for_start
            and s.lifecycle.status.holds_a_place
        ]

    def has_room(self) -> bool:
        return len(self._holding_places(None)) < self.max_agents

    async def _make_room(self, starting: Session) -> None:
        """Keep within --max-agents: stop a warm agent or the longest-idle one, or refuse.

        A session whose agent is starting holds a place, and an agent being stopped holds
        its place until it has exited, unless it is stopped to make room for a starting one
        (which holds that place then): creates that arrive together cannot take the same
        place twice. A warm agent never makes another go."""
        warming = self.warm is not None and self.warm.holds(starting)
        while True:
            holding = self._holding_places(starting)
            if len(holding) < self.max_agents:
                return
            victims = [] if warming else self._victims(holding)
            if not victims:
                raise TooManySessions(
                    f"{len(holding)} agents are running, the limit is {self.max_agents}: "
                    "detach from or delete a session, or wait for a run to end"
                )
            victim = victims[0]
            self.log.info(
                "stopping the agent of {session_id} to start another", session_id=victim.id
            )
            self._freeing_for_start.add(victim.id)
            try:
                if self.warm is not None and self.warm.holds(victim):
                    await self.warm.discard(victim)
                else:
                    await victim.lifecycle.stop()
            finally:
                self._freeing_for_start.discard(victim.id)

    def _victims(self, holding: list[Session]) -> list[Session]:
        """Agents that can go, in the order they should: warm ones, then the longest idle."""
        warm = [s for s in holding if self.warm is not None and self.warm.holds(s)]
        idle = sorted((s for s in holding if s.idle() and s not in warm), key=lambda s: s.last_used)
        return warm + idle

    def stop_idle(self) -> None:
        horizon = self._clock.seconds() - self.idle_timeout
        for session in list(self._host.registered()):
            if session.idle() and session.last_used < horizon:
                self.log.info(
                    "stopping the agent of {session_id}: idle for {seconds:.0f} s",
                    session_id=session.id,
                    seconds=self.idle_timeout,
                )
                session.lifecycle.stop()
        if self.warm is not None:
            self.warm.stop_idle(horizon)
