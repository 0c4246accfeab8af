"""
The method table: what each wire method does, in terms of the session manager.
Handlers validate their params and return a result object.
"""

import re

from twisted.logger import Logger

from piserver import __version__
from piserver.agents.models import public_model, public_state
from piserver.agents.nativetools import parse_tool_answer, validate_native_tools
from piserver.api import params as check
from piserver.api.picommands import SERVER_OWNED, TYPED, PiCommand, passthrough_fields
from piserver.common.errors import (
    AgentCommandFailed,
    InternalError,
    InvalidParams,
    InvalidRequest,
    NotFound,
    RpcError,
    UnknownMethod,
)
from piserver.security.access import grant_of
from piserver.sessions.approvals import parse_response
from piserver.sessions.permissions import Permissions, parse_mode, parse_rules
from piserver.sessions.seedcompat import seed_messages
from piserver.sessions.stream import EVENT_MODES

SERVER_NAME = "pi-server"


class RpcMethods:
    """Handlers are ``handler(connection, request)``; see ``table()`` for wire names."""

    log = Logger()

    def __init__(
        self,
        sessions=None,
        models=None,
        repos=None,
        capabilities: dict | None = None,
        agent: dict | None = None,
        workspace=None,
        usage=None,
        handoff=None,
    ):
        self._sessions = sessions
        self._agent = agent
        # The session.diff/files/commit/push/... handlers (piserver.api.workspace).
        self._workspace = workspace
        # usage.report, session.set_budget and the budget checks (piserver.api.usage).
        self._usage = usage
        # sessions.importable, session.import and session.export (piserver.api.handoff).
        self._handoff = handoff
        self._models = models
        self._repos = repos
        self._capabilities = {"resume": True, **(capabilities or {})}

    def table(self) -> dict:
        table = {"hello": self.hello}
        if self._sessions is not None:
            table.update(
                {
                    "session.create": self.session_create,
                    "session.list": self.session_list,
                    "session.attach": self.session_attach,
                    "session.detach": self.session_detach,
                    "session.delete": self.session_delete,
                    "prompt": self.prompt,
                    "abort": self.abort,
                    "get_state": self.get_state,
                    "get_messages": self.get_messages,
                    "get_available_models": self.get_available_models,
                    "set_model": self.set_model,
                    "clear_conversation": self.clear_conversation,
                    "native_tool_response": self.native_tool_response,
                    "extension_ui_response": self.extension_ui_response,
                    "session.set_permission_mode": self.session_set_permission_mode,
                    "approval.respond": self.approval_respond,
                    # pi's commands that the server gives its own meaning.
                    "new_session": self.clear_conversation,
                    "switch_session": self.switch_session,
                    "fork": self.fork,
                    "clone": self.clone,
                    "export_html": self.export_html,
                    "set_session_name": self.set_session_name,
                    "cycle_model": self.cycle_model,
                }
            )
            for command in TYPED.values():
                table[command.name] = self._typed(command)
        if self._repos is not None:
            table["repos.list"] = self.repos_list
        if self._workspace is not None:
            table.update(self._workspace.table())
        if self._usage is not None:
            table.update(self._usage.table())
        if self._handoff is not None:
            table.update(self._handoff.table())
        return table

    async def hello(self, connection, request):
        params = request.params
        client = check.obj(params, "client")
        name = check.string(client, "name", where="client")
        version = check.string(client, "version", where="client")
        event_mode = check.choice(
            params, "eventMode", EVENT_MODES, "full", '"eventMode" must be "full" or "delta"'
        )
        features = check.strings(params, "features")
        resume = check.obj(params, "resume", required=False)
        last_seqs = {}
        previous = None
        if resume is not None:
            by_session = check.obj(resume, "lastSeqBySession", required=False) or {}
            for session_id, seq in by_session.items():
                if type(seq) is not int or seq < 0:
                    raise InvalidParams(
                        f'"resume.lastSeqBySession" values must be non-negative integers '
                        f"({session_id[:80]!r})"
                    )
                last_seqs[session_id] = seq
            previous_id = check.string(resume, "connectionId", required=False, where="resume")
            if previous_id and self._sessions is not None:
                previous = self._sessions.previous(previous_id)
        native_tools = params.get("nativeTools")
        if native_tools is not None:
            native_tools = validate_native_tools(native_tools)
        elif previous is not None:
            # The seed's app reconnects without declaring its tools again: it still has them.
            native_tools = previous.native_tools
        connection.client = {"name": name, "version": version}
        connection.event_mode = event_mode
        connection.features = frozenset(features) & FEATURES
        if self._sessions is not None:
            self._sessions.watch(connection)
        if native_tools is not None:
            connection.native_tools = native_tools
            # Sessions this device is attached to offer its tools from their next run.
            for session in self._sessions.sessions.values():
                if session.stream.is_attached(connection):
                    self._sessions.use_native_tools_of(connection, session)
        result = {
            "connectionId": connection.connection_id,
            "server": {"name": SERVER_NAME, "version": __version__},
            "capabilities": dict(self._capabilities),
            # Who this client is and what it may do, so that it offers only that.
            "device": grant_of(connection).describe(),
        }
        if self._agent is not None:
            result["agent"] = self._agent
        if resume is not None:
            result["resumed"], errors = await self._resume(connection, last_seqs, previous)
            if errors:
                result["resumeErrors"] = errors
        return result

    async def _resume(self, connection, last_seqs: dict, previous) -> tuple[dict, dict]:
        """Attach ``connection`` to the sessions it resumes; one that cannot be resumed is
        reported, and the others still are."""
        resumed, errors = {}, {}
        if previous is not None:
            # What the old connection was attached to comes back, seen events or not.
            last_seqs = {**dict.fromkeys(sorted(previous.attached)), **last_seqs}
        grant = grant_of(connection)
        for session_id, seq in last_seqs.items():
            session = self._sessions.sessions.get(session_id)
            if session is None or not grant.may_see(session):
                resumed[session_id] = "not_found"
                continue
            if previous is not None and session_id not in previous.attached:
                # The client remembers every session it saw; only re-attach what it was on.
                resumed[session_id] = "not_attached"
                continue
            try:
                resumed[session_id] = await self._sessions.attach(
                    connection, session, exclusive=False, last_seq=seq
                )
            except RpcError as e:
                resumed[session_id] = "failed"
                errors[session_id] = e.to_dict()
            except Exception:
                self.log.failure("resuming {session_id} failed", session_id=session_id)
                resumed[session_id] = "failed"
                errors[session_id] = InternalError("internal error: see the server log").to_dict()
        return resumed, errors

    # -- sessions -----------------------------------------------------------

    async def session_create(self, connection, request):
        params = request.params
        mode = check.choice(
            params, "mode", SESSION_MODES, "code", '"mode" must be "chat" or "code"'
        )
        repo_id = check.string(params, "repoId", required=False)
        if mode == "code" and repo_id is None:
            raise InvalidParams('a code session needs "repoId" (see repos.list)')
        system_prompt = check.text(params, "systemPrompt", required=False)
        provider = check.string(params, "provider", required=False)
        model_id = check.string(params, "modelId", required=False)
        include_native_tools = check.boolean(params, "includeNativeTools", False)
        permissions = _permissions(params, "permissionMode", "permissionRules")
        budget = self._usage.budget_param(params) if self._usage is not None else None
        repo = None
        if mode == "code":
            if self._repos is None:
                raise InvalidParams("code sessions are not available on this server")
            repo = await self._repos.lookup(repo_id)
        session = await self._sessions.create(
            connection,
            mode,
            repo=repo,
            provider=provider,
            model_id=model_id,
            system_prompt=system_prompt,
            include_native_tools=include_native_tools,
            permissions=permissions,
        )
        if self._usage is not None:
            self._usage.created(session, budget)
        return {"sessionId": session.id}

    def session_list(self, connection, request):
        repo_id = check.string(request.params, "repoId", required=False)
        grant = grant_of(connection)
        summaries = self._sessions.summaries(repo_id)
        if not grant.unrestricted:
            visible = {s.id for s in self._sessions.sessions.values() if grant.may_see(s)}
            summaries = [s for s in summaries if s["sessionId"] in visible]
        if self._usage is not None:
            return self._usage.with_usage(summaries)
        return {"sessions": summaries}

    async def session_attach(self, connection, request):
        session = self._sessions.get(check.target_session_id(request))
        exclusive = check.boolean(request.params, "exclusive", True)
        last_seq = check.natural(request.params, "lastSeq")
        await self._sessions.ensure_agent(session)
        caught_up = await self._sessions.attach(
            connection, session, exclusive=exclusive, last_seq=last_seq
        )
        return {
            "sessionId": session.id,
            "status": session.status(),
            "lastSeq": session.stream.seq,
            "catchUp": caught_up,
        }

    def session_detach(self, connection, request):
        # Never fails: a client clears its current session only once this succeeds.
        session_id = check.target_session_id(request)
        if session_id is None:
            self._sessions.detach(connection)
        elif (session := self._sessions.sessions.get(session_id)) is not None:
            self._sessions.detach(connection, session)
        return {}

    async def session_delete(self, connection, request):
        session = self._sessions.get(check.target_session_id(request))
        return await self._sessions.delete(session)

    # -- answers from devices -------------------------------------------------

    def native_tool_response(self, connection, request):
        answer = parse_tool_answer(request.params)
        session = self._waiting_session(
            connection, request, lambda s: s.calls.has_call(answer.call_id)
        )
        if session is None:
            raise NotFound(f"no pending native tool call {answer.call_id[:80]!r}")
        session.calls.answer_call(connection, answer)
        return {}

    def extension_ui_response(self, connection, request):
        dialog_id = check.string(request.params, "id")
        if not dialog_id:
            raise InvalidParams('missing "id" (a string)')
        session = self._waiting_session(
            connection, request, lambda s: s.calls.has_dialog(dialog_id)
        )
        if session is None:
            raise NotFound(f"no pending extension dialog {dialog_id[:80]!r}")
        session.calls.answer_dialog(connection, request.params)
        return {}

    def session_set_permission_mode(self, connection, request):
        session = self._sessions.get(check.target_session_id(request))
        if "mode" not in request.params:
            raise InvalidParams('missing "mode"')
        permissions = _permissions(request.params, "mode", "rules")
        if "rules" not in request.params:
            # The mode changes; the rules (and what people allowed) stay.
            permissions.rules = list(session.permissions.rules)
        permissions.grants = list(session.permissions.grants)
        self._sessions.set_permissions(session, permissions)
        session.approvals.reconsider(connection.device or "server token")
        return {"sessionId": session.id, "permissionMode": str(permissions.mode)}

    def approval_respond(self, connection, request):
        approval_id, decision, reason = parse_response(request.params)
        session = self._waiting_session(connection, request, lambda s: approval_id in s.approvals)
        if session is None:
            raise NotFound(f"no pending approval {approval_id[:80]!r}")
        by = connection.device or "server token"
        session.approvals.respond(by, approval_id, decision, reason)
        return {}

    def _waiting_session(self, connection, request, is_waiting):
        """The session named in the request, else the one in the device's reach waiting
        for this answer."""
        session_id = check.session_id(request)
        if session_id:
            session = self._sessions.get(session_id)
            return session if is_waiting(session) else None
        grant = grant_of(connection)
        return next(
            (s for s in self._sessions.sessions.values() if grant.may_see(s) and is_waiting(s)),
            None,
        )

    # -- repos --------------------------------------------------------------

    async def repos_list(self, connection, request):
        listed = await self._repos.list()
        grant = grant_of(connection)
        if grant.repos is None:
            return listed
        return {**listed, "repos": [r for r in listed["repos"] if grant.may_use_repo(r["id"])]}

    # -- agent calls --------------------------------------------------------

    async def prompt(self, connection, request):
        params = request.params
        session = self._sessions.get(check.session_id(request))
        message = check.text(params, "message", nonempty=True)
        images = check.images(params, "images")
        behavior = check.choice(
            params,
            "streamingBehavior",
            STREAMING_BEHAVIORS,
            message='"streamingBehavior" must be "steer" or "followUp"',
        )
        self._admit(connection, session)
        data = await self._sessions.prompt(session, message, images, behavior)
        # pi 1.6 says what became of the prompt; "handled": no run starts for it.
        disposition = data.get("disposition")
        return {"disposition": disposition} if disposition in DISPOSITIONS else {}

    def _admit(self, connection, session) -> None:
        if self._usage is not None:
            self._usage.admit(connection, session)

    async def abort(self, connection, request):
        session = self._sessions.get(check.session_id(request))
        return await self._sessions.abort(session)

    async def get_state(self, connection, request):
        session = self._sessions.get(check.session_id(request))
        state = public_state(await self._sessions.command(session, "get_state") or {})
        return {**state, "permissionMode": str(session.permissions.mode)}

    async def get_messages(self, connection, request):
        session = self._sessions.get(check.session_id(request))
        data = await self._sessions.command(session, "get_messages") or {}
        messages = data.get("messages", [])
        if "piMessages" not in connection.features:
            messages = seed_messages(messages)
        return {"messages": messages}

    async def get_available_models(self, connection, request):
        session_id = check.session_id(request)
        # The seed's app names its current session, which may be gone: the models are
        # the same.
        if session_id and session_id in self._sessions.sessions:
            data = (
                await self._sessions.command(self._sessions.get(session_id), "get_available_models")
                or {}
            )
            return {"models": [public_model(m) for m in data.get("models", [])]}
        return {"models": await self._models.available()}

    async def set_model(self, connection, request):
        session = self._sessions.get(check.session_id(request))
        provider = check.string(request.params, "provider")
        model_id = check.string(request.params, "modelId")
        model = await self._sessions.set_model(session, provider, model_id)
        return {"model": public_model(model)}

    async def clear_conversation(self, connection, request):
        session = self._sessions.get(check.session_id(request))
        data = await self._sessions.command(session, "new_session") or {}
        return {"cancelled": bool(data.get("cancelled", False))}

    def _typed(self, command: PiCommand):
        async def handler(connection, request):
            session = self._sessions.get(check.session_id(request))
            fields = command.fields_from(request.params)
            if command.name in BUDGETED_COMMANDS:
                self._admit(connection, session)
            data = await self._sessions.command(
                session, command.name, timeout=command.timeout, **fields
            )
            return _result(data)

        handler.__name__ = command.name
        return handler

    async def pass_through(self, connection, request):
        """A method the server does not know: pi's command of that name, for a session."""
        name = request.method
        session_id = check.session_id(request)
        if not session_id or name in SERVER_OWNED or not PI_COMMAND_NAME.match(name):
            raise UnknownMethod(f"unknown method {name[:80]!r}")
        session = self._sessions.get(session_id)
        try:
            data = await self._sessions.command(session, name, **passthrough_fields(request.params))
        except AgentCommandFailed as e:
            if e.message.startswith("Unknown command"):
                raise UnknownMethod(f"unknown method {name!r} (pi: {e.message})") from None
            raise
        return _result(data)

    def switch_session(self, connection, request):
        raise InvalidRequest(
            "switch_session would bind this session to another conversation: create a "
            "session (session.create), or copy this one with fork or clone"
        )

    async def fork(self, connection, request):
        source = self._sessions.get(check.session_id(request))
        entry_id = check.string(request.params, "entryId")
        return await self._copy(connection, source, "fork", {"entryId": entry_id})

    async def clone(self, connection, request):
        source = self._sessions.get(check.session_id(request))
        return await self._copy(connection, source, "clone", {})

    async def _copy(self, connection, source, command: str, fields: dict) -> dict:
        repo = None
        if source.mode == "code":
            repo = await self._repos.lookup(source.repo_id)
        session, data = await self._sessions.copy(connection, source, repo, command, fields)
        result = {"sessionId": session.id, "cancelled": False}
        if "text" in data:
            result["text"] = data["text"]
        return result

    async def export_html(self, connection, request):
        session = self._sessions.get(check.session_id(request))
        return {"html": await self._sessions.export_html(session)}

    async def set_session_name(self, connection, request):
        session = self._sessions.get(check.session_id(request))
        name = check.text(request.params, "name", nonempty=True, empty="must be a non-empty string")
        await self._sessions.command(session, "set_session_name", name=name)
        self._sessions.rename(session, name.strip())
        return {}

    async def cycle_model(self, connection, request):
        session = self._sessions.get(check.session_id(request))
        data = await self._sessions.cycle_model(session)
        if data is None:
            return {"model": None}
        return {**data, "model": public_model(data.get("model") or {})}


SESSION_MODES = ("chat", "code")
# hello.features a client may declare: it reads session_snapshot events; it reads pi's
# messages as pi sends them (else get_messages maps them onto the seed's kinds).
FEATURES = frozenset({"snapshots", "piMessages"})
# pi names its commands in snake_case; anything else is no pi command.
PI_COMMAND_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


def _result(data) -> dict:
    """pi's answer data as a result object (``{}`` when pi sent none)."""
    if data is None:
        return {}
    return data if isinstance(data, dict) else {"data": data}


STREAMING_BEHAVIORS = ("steer", "followUp")
DISPOSITIONS = ("started", "queued", "handled")
# pi's commands that start or extend a run: refused once a budget is spent.
BUDGETED_COMMANDS = frozenset({"steer", "follow_up"})


def _permissions(params: dict, mode_key: str, rules_key: str) -> Permissions | None:
    """The mode and rules a request gives (None: neither, the server's default)."""
    mode, rules = params.get(mode_key), params.get(rules_key)
    if mode is None and rules is None:
        return None
    if mode is None:
        # Rules alone choose the mode they are for.
        mode = "rules"
    return Permissions(
        mode=parse_mode(mode, mode_key),
        rules=parse_rules(rules, rules_key) if rules is not None else [],
    )
