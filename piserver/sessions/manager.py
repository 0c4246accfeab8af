"""
The registry of sessions: restoring them at start, saving them, create, copy and
delete, attaching connections to their events.

A session outlives its agent process: a stopped agent (server restart, crash, idle)
is started again on the session's own pi session files by the next attach or agent
call, so the conversation resumes where it was (``agents``, ``lifecycle``).
"""

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from piserver.agents.gate import write_mode_file
from piserver.agents.nativetools import write_tools_file
from piserver.agents.protocol import AgentProtocol
from piserver.common.errors import AgentCommandFailed, InvalidParams, InvalidState, NotFound
from piserver.common.files import write_bytes_atomic, write_json_atomic
from piserver.sessions.aborts import abort_run
from piserver.sessions.agentfiles import copy_for_fork, read_export
from piserver.sessions.agents import SessionAgents
from piserver.sessions.catchup import CatchUp, CaughtUp
from piserver.sessions.connections import ConnectionMemory, PreviousConnection
from piserver.sessions.intents import Intent, clear_intent, make_directory, write_intent
from piserver.sessions.observer import SessionObservers
from piserver.sessions.parts import SessionParts
from piserver.sessions.permissions import Permissions
from piserver.sessions.projecttrust import TrustRestarts
from piserver.sessions.recovery import Recovery
from piserver.sessions.relay import EventRelay
from piserver.sessions.session import SESSION_RECORD, Session, iso_time
from piserver.sessions.settings import SessionSettings
from piserver.sessions.teardown import Teardown
from piserver.sessions.warmsupply import WarmSupply

PROMPT_TIMEOUT = 600.0
NAME_LENGTH = 60
# A session with no event for this long closes its journal's write descriptor: a thousand
# sessions that streamed once must not hold a thousand files open.
JOURNAL_IDLE = 60.0


class SessionManager(service.Service):
    """
    Owns every session. ``reactor`` provides IReactorTime (and a thread pool
    for removing directories); ``settings`` is what the options say of sessions;
    ``supervisor`` starts and stops agents; ``store`` is the ``state.json`` StateStore;
    ``models`` checks a model asked for. Keyword collaborators: ``checkouts`` makes and
    removes code sessions' checkouts (None: chat only); ``on_run_end(session)`` hears of
    a code session's run ending; ``new_id()`` and ``in_thread(f, *args)`` are seams for
    tests (a session id; blocking file work off the reactor thread).
    """

    name = "sessions"
    log = Logger()

    def __init__(
        self,
        reactor,
        settings: SessionSettings,
        supervisor,
        store,
        models,
        *,
        checkouts=None,
        on_run_end: Callable[[Session], None] | None = None,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        in_thread: Callable[..., defer.Deferred] | None = None,
    ):
        self._reactor = reactor
        self._settings = settings
        # The mode of a session created without one (--permission-mode).
        self.permission_mode = settings.permission_mode
        self._idle_check = task.LoopingCall(self._sweep)
        self._idle_check.clock = reactor
        # Runs blocking file work (removing a checkout) off the reactor thread.
        self._in_thread = in_thread or (
            lambda f, *args, **kwargs: threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), f, *args, **kwargs
            )
        )
        self._data_dir = settings.data_dir
        self.sessions_dir = settings.sessions_dir
        self._store = store
        self._models = models
        self._new_id = new_id
        # Creates and removes code sessions' checkouts (repos issue); None: chat only.
        self._checkouts = checkouts
        self.sessions: dict[str, Session] = {}
        # The one way a session is undone (deleted, failed create, warm agent, recovery).
        self._teardown = Teardown(store, checkouts, self._in_thread)
        # Connections seen by hello, and what recently closed ones left behind, so that a
        # client resuming its connection gets its tools and sessions back.
        self.connections = ConnectionMemory(self._attached_to, self.detach)
        # Fires once what a crash interrupted (creates, deletes) is undone or finished.
        self.recovered = defer.succeed(None)
        # Who hears of runs, crashes and input needed (metrics, notifications...): add an
        # ISessionObserver with observers.add. The runs are worked out once, by the relay.
        self.observers = SessionObservers()
        self.observers.add(TrustRestarts())
        # pi's events, relayed; a code session's run that ends goes to on_run_end
        # (files_changed, piserver.workspace).
        self._relay = EventRelay(reactor, store, self.observers, self, on_run_end)
        self.agents = SessionAgents(
            reactor,
            self._data_dir,
            supervisor,
            self,
            self.observers,
            max_agents=settings.max_agents,
            idle_timeout=settings.idle_timeout,
        )
        self._parts = SessionParts(reactor, settings, self, self.observers, self.agents)
        self._catch_up = CatchUp(self, self._in_thread)
        self._warm = WarmSupply(reactor, self._data_dir, self.agents, self, settings.warm_agents)
        # on_sent(mode, size) for every event frame sent (metrics).
        self.on_event_sent = None

    # -- lifecycle ----------------------------------------------------------

    def startService(self):
        recovery = Recovery(self.sessions_dir, self._store, self._teardown)
        restored = recovery.restore()
        for session in restored.sessions:
            self._parts.equip(session)
            self.sessions[session.id] = session
        self.log.info("{count} sessions restored", count=len(self.sessions))
        if restored.unfinished:
            self.recovered = defer.Deferred.fromCoroutine(recovery.finish(restored))
        self._idle_check.start(min(60.0, self._settings.idle_timeout), now=False)
        super().startService()
        self._warm.start()

    def stopService(self):
        super().stopService()
        if self._idle_check.running:
            self._idle_check.stop()
        self._store.flush()
        for session in self.sessions.values():
            session.stream.flush()
        return defer.ensureDeferred(self._warm.stop())

    def _now(self) -> str:
        return iso_time(self._reactor.seconds())

    def save(self, session: Session) -> None:
        # Only sessions in the registry: not a warm agent's, nor a deleted one.
        if self.sessions.get(session.id) is session:
            record = session.record()
            self._store.put(session.id, record)
            # A copy beside the session's files: state.json can be rebuilt from these.
            write_json_atomic(session.directory / SESSION_RECORD, record)

    # -- lookup -------------------------------------------------------------

    def get(self, session_id) -> Session:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidParams('missing "sessionId" (in the envelope or params)')
        session = self.sessions.get(session_id)
        if session is None:
            raise NotFound(f"no session {session_id[:80]!r}")
        return session

    def summaries(self, repo_id: str | None = None) -> list[dict]:
        return [
            {
                "sessionId": s.id,
                "mode": s.mode,
                "repoId": s.repo_id,
                "worktreePath": str(s.cwd),
                "createdAt": s.created_at,
                "lastActivityAt": s.last_activity_at,
                "name": s.name,
                "status": s.status(),
                "permissionMode": str(s.permissions.mode),
                "pendingApprovals": len(s.approvals),
            }
            for s in sorted(self.sessions.values(), key=lambda s: s.created_at)
            if repo_id is None or s.repo_id == repo_id
        ]

    # -- create / delete ----------------------------------------------------

    async def create(
        self,
        connection,
        mode: str,
        repo: dict | None = None,
        provider: str | None = None,
        model_id: str | None = None,
        system_prompt: str | None = None,
        include_native_tools: bool = False,
        seed=None,
        permissions: Permissions | None = None,
        prepare=None,
    ) -> Session:
        """A new session, attached to ``connection``. ``seed(session)``, when given, runs in a
        thread before the agent starts (to give it files of its own); ``await
        prepare(session)`` too, once its checkout is made (to change its files)."""
        if (provider is None) != (model_id is None):
            raise InvalidParams('"provider" and "modelId" go together')
        if provider is not None:
            await self._models.require(provider, model_id)
        now = self._now()
        session = self._warm.take() if mode == "chat" and seed is None and prepare is None else None
        warm = session is not None
        if warm:
            session.created_at = session.last_activity_at = now
        else:
            session = self._new_session(mode, repo_id=repo["id"] if repo else None)
        if provider is not None:
            # (Else a warm agent's default model, pinned once it started, stays.)
            session.provider, session.model_id = provider, model_id
        session.system_prompt = system_prompt
        session.include_native_tools = include_native_tools
        session.device = getattr(connection, "device", None)
        session.permissions = permissions or Permissions(mode=self.permission_mode)
        # Before the agent's first tool call (a warm agent already reads the file).
        write_mode_file(session.permission_file, session.permissions.mode)
        checked_out = False
        try:
            if connection is not None:
                # Attached from the start, so it sees session_progress while the checkout runs.
                await self.attach(connection, session, exclusive=True)
            if system_prompt is not None:
                # Read by the extension before each run: a warm agent takes it on too.
                write_bytes_atomic(session.system_prompt_file, system_prompt.encode("utf-8"))
            if mode == "code":
                session.pi_session_dir.mkdir(mode=0o700)
                write_intent(session, Intent.CREATE, self._checkouts.planned(session, repo))
                checkout = await self._checkouts.create(
                    session,
                    repo,
                    lambda stage, text: self.publish(
                        session,
                        "session_progress",
                        {"type": "session_progress", "stage": stage, "message": text},
                    ),
                )
                session.cwd = checkout.path
                session.checkout = checkout.record
                checked_out = True
            elif not warm:
                self._make_chat_directories(session)
            if prepare is not None:
                await prepare(session)
            if session.offers_native_tools:
                # The creating device's tools; a device attaching later brings its own.
                self._offer_native_tools(session, getattr(connection, "native_tools", None) or [])
            if seed is not None:
                session.agent_dir.mkdir(mode=0o700)
                await self._in_thread(seed, session)
            self.sessions[session.id] = session
            self.save(session)
            clear_intent(session)
            await self.ensure_agent(session)
            if warm and provider is not None:
                # The warm agent started on the default model.
                await self.command(session, "set_model", provider=provider, modelId=model_id)
        except BaseException:
            await self.tear_down(session, checkout=checked_out)
            raise
        finally:
            # Also after a cold create: the pool may have discarded a stale agent.
            self._warm.schedule_refill()
        self.log.info(
            "session {session_id} created ({mode}) in {cwd}",
            session_id=session.id,
            mode=mode,
            cwd=str(session.cwd),
        )
        return session

    async def copy(
        self, connection, source: Session, repo: dict | None, command: str, fields: dict
    ) -> tuple[Session, dict]:
        """A new session holding ``source``'s conversation as pi's ``fork`` or ``clone``
        makes it: pi's files of ``source`` are copied, the new agent forks from them, and
        the copies are removed. A code session gets a checkout of its own."""

        def seed(session: Session) -> None:
            # The source's agent wrote these files: never read through a link (agentfiles).
            copy_for_fork(
                source.pi_session_dir,
                source.agent_dir,
                session.pi_session_dir,
                session.agent_dir,
                session.cwd,
            )

        session = await self.create(
            connection,
            source.mode,
            repo=repo,
            provider=source.provider,
            model_id=source.model_id,
            system_prompt=source.system_prompt,
            include_native_tools=source.include_native_tools,
            seed=seed,
            # A copy asks as its source does (its grants were for the source only).
            permissions=Permissions(
                mode=source.permissions.mode, rules=list(source.permissions.rules)
            ),
        )
        try:
            data = await self.command(session, command, **fields) or {}
            if data.get("cancelled"):
                raise InvalidState(f"a pi extension cancelled the {command}")
            state = await self.command(session, "get_state") or {}
            forked = Path(state.get("sessionFile") or "").name
            for path in session.pi_session_dir.glob("*.jsonl"):
                if path.name != forked:
                    path.unlink()
        except BaseException:
            await self.delete(session)
            raise
        session.name = source.name
        session.forked_from = source.id
        self.save(session)
        self.log.info(
            "session {session_id} made from {source} by {command}",
            session_id=session.id,
            source=source.id,
            command=command,
        )
        return session, data

    async def export_html(self, session: Session) -> str:
        """The conversation as pi's HTML export. pi writes it into the session's own pi dir
        (no checkout, nothing a page of ours serves), from where it is read and removed."""
        target = session.pi_session_dir / f".export-{uuid.uuid4().hex}.html"
        try:
            await self.command(
                session, "export_html", outputPath=str(target), timeout=PROMPT_TIMEOUT
            )
            # The agent can swap the file for a link before it is read (agentfiles).
            return await self._in_thread(read_export, session.pi_session_dir, target.name)
        finally:
            target.unlink(missing_ok=True)

    def set_permissions(self, session: Session, permissions: Permissions) -> None:
        """Change what the agent may do without asking; applies from its next tool call."""
        session.permissions = permissions
        write_mode_file(session.permission_file, permissions.mode)
        self.save(session)
        self.log.info(
            "session {session_id}: permission mode {mode}",
            session_id=session.id,
            mode=str(permissions.mode),
        )

    def rename(self, session: Session, name: str | None) -> None:
        session.name = name
        self.save(session)

    async def cycle_model(self, session: Session) -> dict | None:
        data = await self.command(session, "cycle_model")
        model = (data or {}).get("model") or {}
        if model.get("provider") and model.get("id"):
            session.provider, session.model_id = model["provider"], model["id"]
            self.save(session)
        return data

    async def delete(self, session: Session) -> dict:
        result = await self.tear_down(session)
        self.log.info("session {session_id} deleted", session_id=session.id)
        return result

    async def tear_down(self, session: Session, checkout: bool | None = None) -> dict:
        """Undo a session: a deleted one, one whose create failed, a warm agent's
        (``teardown.Teardown``); ``checkout`` None: its checkout, if a code session's."""
        self.sessions.pop(session.id, None)
        return await self._teardown(session, checkout)

    # -- making sessions ----------------------------------------------------

    def _make_chat_directories(self, session: Session) -> None:
        session.pi_session_dir.mkdir(mode=0o700)
        session.cwd.mkdir(mode=0o700)

    def _new_session(
        self, mode: str, repo_id: str | None = None, intent: Intent | None = None, **fields
    ) -> Session:
        """A new session with its directory and live parts, not in the registry yet;
        ``intent`` is written before anything else is made in its directory."""
        session_id = self._new_id()
        directory = self.sessions_dir / session_id
        now = self._now()
        session = Session(
            id=session_id,
            mode=mode,
            directory=directory,
            cwd=directory / "workspace",
            created_at=now,
            last_activity_at=now,
            repo_id=repo_id,
            **fields,
        )
        make_directory(session, intent)
        self._parts.equip(session)
        return session

    def provision_warm(self) -> Session:
        """A chat session for the warm pool (``warmsupply.WarmMaker``): not in the
        registry; its intent undoes it should the server die before it is handed over."""
        session = self._new_session("chat", intent=Intent.WARM, last_used=self._reactor.seconds())
        self._make_chat_directories(session)
        # No tools until a device declares some: written now, a create that offers none
        # has nothing to write (each file written is two fsyncs of the create's time).
        self._offer_native_tools(session, [])
        return session

    def registered(self) -> Iterable[Session]:
        return self.sessions.values()

    # -- attach / detach ----------------------------------------------------

    async def attach(
        self, connection, session: Session, exclusive: bool = True, last_seq: int | None = None
    ) -> CaughtUp:
        """
        Attach a connection to a session's events. With ``last_seq`` it first gets every
        event after it; when the journal no longer has them, a ``session_snapshot``.
        Returns how it was caught up: ``live``, ``replayed`` or ``snapshot``.
        """
        if exclusive:
            for other in list(self.sessions.values()):
                if other is not session:
                    other.stream.detach(connection)
        self.watch(connection)
        self.use_native_tools_of(connection, session)
        return await self._catch_up.attach(connection, session, last_seq)

    def use_native_tools_of(self, connection, session: Session) -> None:
        """A device that declared tools attaches: the session offers its tools from the
        next run on (the extension re-reads the file before each run)."""
        tools = getattr(connection, "native_tools", None)
        if tools is not None and session.offers_native_tools:
            self._offer_native_tools(session, tools)

    def _offer_native_tools(self, session: Session, tools: list) -> None:
        # Attach and resume happen often; rewrite (and fsync) the file only on a change.
        if tools != session.native_tools:
            write_tools_file(session.native_tools_file, tools)
            session.native_tools = list(tools)

    def detach(self, connection, session: Session | None = None) -> None:
        targets = [session] if session is not None else list(self.sessions.values())
        for target in targets:
            target.stream.detach(connection)

    def watch(self, connection) -> None:
        """Keep track of ``connection`` (see ``previous``)."""
        if self.connections.watch(connection):
            # Someone is here: the next create should find a warm agent (the pool goes
            # when the server is idle).
            self._warm.fill()

    def previous(self, connection_id: str) -> PreviousConnection | None:
        """What connection ``connection_id`` had (``ConnectionMemory.previous``)."""
        return self.connections.previous(connection_id)

    def _attached_to(self, connection) -> frozenset:
        return frozenset(s.id for s in self.sessions.values() if s.stream.is_attached(connection))

    # -- the agent ----------------------------------------------------------

    def ensure_agent(self, session: Session) -> defer.Deferred:
        """Fire with the session's running agent, starting it if need be."""
        return session.lifecycle.want()

    def _sweep(self) -> None:
        self.agents.stop_idle()
        self._release_idle_journals()

    def _release_idle_journals(self) -> None:
        horizon = self._reactor.seconds() - JOURNAL_IDLE
        for session in self.sessions.values():
            if session.last_used < horizon:
                session.journal.release_writer()

    def agent_event(self, session: Session, agent: AgentProtocol, event: dict, raw: bytes):
        """``agent``, the process of ``session``, wrote ``event`` (``relay.EventRelay``)."""
        self._relay.agent_event(session, agent, event, raw)

    # -- events -------------------------------------------------------------

    def publish(
        self,
        session: Session,
        event_type: str,
        payload: dict,
        payload_json: bytes | None = None,
        to=None,
    ) -> None:
        """Number, journal and send an event (pi's, relayed as ``payload_json``, or ours)."""
        self._relay.publish(session, event_type, payload, payload_json, to=to)

    def event_sent(self, mode: str, size: int) -> None:
        if self.on_event_sent is not None:
            self.on_event_sent(mode, size)

    # -- agent calls --------------------------------------------------------

    async def command(
        self, session: Session, command: str, /, timeout: float | None = None, **fields
    ):
        agent = await self.ensure_agent(session)
        session.last_used = self._reactor.seconds()
        return await agent.command(command, timeout=timeout, **fields)

    async def abort(self, session: Session) -> dict:
        """End the session's run (``aborts.abort_run``): its answer."""
        return await abort_run(self, session)

    def run_ended(self, session: Session) -> None:
        self._relay.run_ended(session)

    def kill_agent(self, agent: AgentProtocol) -> defer.Deferred:
        return self.agents.supervisor.kill(agent)

    async def prompt(
        self, session: Session, message: str, images=None, streaming_behavior=None
    ) -> dict:
        """pi's answer data: ``{"disposition": "started" | "queued" | "handled"}``."""
        fields = {"message": message}
        if images is not None:
            fields["images"] = images
        if streaming_behavior is not None:
            fields["streamingBehavior"] = streaming_behavior
        if session.name is None:
            session.name = _name_from(message)
            self.save(session)
        try:
            # An extension command answers only once its dialogs are answered.
            data = await self.command(session, "prompt", timeout=PROMPT_TIMEOUT, **fields)
        except AgentCommandFailed as e:
            raise InvalidState(e.message) from None
        return data if isinstance(data, dict) else {}

    async def set_model(self, session: Session, provider: str, model_id: str) -> dict:
        model = await self.command(session, "set_model", provider=provider, modelId=model_id)
        # Restarts pass the model on the command line: keep it in step.
        session.provider, session.model_id = provider, model_id
        self.save(session)
        return model


def _name_from(message: str) -> str | None:
    first = message.strip().split("\n", 1)[0].strip()
    if not first:
        return None
    return first if len(first) <= NAME_LENGTH else first[: NAME_LENGTH - 1] + "…"
