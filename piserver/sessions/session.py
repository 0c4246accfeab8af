"""
A session's record: what it is (mode, working directory, model, name...), how it is
saved, and the live parts a running server gives it (stream, agent lifecycle).
"""

import re
from datetime import UTC, datetime
from pathlib import Path

import attr

from piserver.agents.protocol import AgentProtocol
from piserver.common.errors import InvalidParams
from piserver.repos.checkouts import CheckoutRecord
from piserver.sessions.devicecalls import DeviceCalls
from piserver.sessions.journal import Journal
from piserver.sessions.lifecycle import AgentLifecycle, AgentStatus
from piserver.sessions.permissions import Permissions, parse_grants, parse_mode, parse_rules
from piserver.sessions.stream import EventStream

# Session ids are ours (uuid4); anything else a client sends is never a path.
# The copy of a session's record kept beside its files: state.json can be rebuilt from these.
SESSION_RECORD = "session.json"
SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attr.s(eq=False)
class Session:
    id: str = attr.ib()
    mode: str = attr.ib()
    directory: Path = attr.ib()
    cwd: Path = attr.ib()
    created_at: str = attr.ib()
    last_activity_at: str = attr.ib()
    repo_id: str | None = attr.ib(default=None)
    name: str | None = attr.ib(default=None)
    provider: str | None = attr.ib(default=None)
    model_id: str | None = attr.ib(default=None)
    system_prompt: str | None = attr.ib(default=None)
    include_native_tools: bool = attr.ib(default=False)
    # The device token that created it (its name; None: the server token, or a session
    # from before devices were recorded). Reach (security/scopes.py) goes by it.
    device: str | None = attr.ib(default=None)
    # What the agent may do without asking (permissions.py).
    permissions: Permissions = attr.ib(factory=Permissions)
    # A code session's checkout: its branch, base and repository.
    checkout: CheckoutRecord | None = attr.ib(default=None)
    # The session this one was forked or cloned from.
    forked_from: str | None = attr.ib(default=None)
    # Fields of a saved record that no attribute holds (another version's): kept as read.
    extra: dict = attr.ib(factory=dict)
    # The session's own budget in USD (sessions/budgets.py); None: none.
    budget_usd: float | None = attr.ib(default=None)
    # The last event seq its record knows of (the stream's seq once it is open).
    last_seq: int = attr.ib(default=0)
    # A person's answer to pi's project trust for its folder (projecttrust.py); None: none.
    project_trust: bool | None = attr.ib(default=None)

    # Its agent's state machine (the process, if any, is ``lifecycle.agent``).
    lifecycle: AgentLifecycle | None = attr.ib(default=None)
    stream: EventStream | None = attr.ib(default=None)
    journal: Journal | None = attr.ib(default=None)
    calls: DeviceCalls | None = attr.ib(default=None)
    # Tool calls waiting for a person (approvals.Approvals).
    approvals: object = attr.ib(default=None)
    # Whether its agent loads the folder's pi configuration (projecttrust.ProjectTrust).
    trust: object = attr.ib(default=None)
    # The native tools last written for the agent; None: not known since start.
    native_tools: list | None = attr.ib(default=None)
    # A run goes on: from pi's agent_start to its agent_settled.
    streaming: bool = attr.ib(default=False)
    # Clock seconds of the last event or call, for stopping idle agents.
    last_used: float = attr.ib(default=0.0)
    # When last_activity_at was last updated.
    activity_noted: float = attr.ib(default=float("-inf"))

    @property
    def agent(self) -> AgentProtocol | None:
        return self.lifecycle.agent

    @property
    def deleted(self) -> bool:
        return self.lifecycle.status is AgentStatus.DELETED

    @property
    def pi_session_dir(self) -> Path:
        return self.directory / "pi"

    @property
    def agent_dir(self) -> Path:
        """pi's agent dir for this session (see agentdir)."""
        return self.directory / "agent"

    @property
    def native_tools_file(self) -> Path:
        return self.directory / "native-tools.json"

    @property
    def system_prompt_file(self) -> Path:
        return self.directory / "system-prompt.md"

    @property
    def permission_file(self) -> Path:
        """The mode the extension's gate reads (read-only to a sandboxed agent)."""
        return self.directory / "permission.json"

    @property
    def offers_native_tools(self) -> bool:
        return self.mode == "chat" or self.include_native_tools

    def record(self) -> dict:
        return {
            "sessionId": self.id,
            "mode": self.mode,
            "repoId": self.repo_id,
            "worktreePath": str(self.cwd),
            "createdAt": self.created_at,
            "lastActivityAt": self.last_activity_at,
            "name": self.name,
            "provider": self.provider,
            "modelId": self.model_id,
            "systemPrompt": self.system_prompt,
            "includeNativeTools": self.include_native_tools,
            "permissionMode": str(self.permissions.mode),
            "permissionRules": [rule.to_json() for rule in self.permissions.rules],
            "permissionGrants": [grant.to_json() for grant in self.permissions.grants],
            "lastSeq": self.stream.seq if self.stream is not None else self.last_seq,
            **(self.checkout.to_json() if self.checkout is not None else {}),
            **({"forkedFrom": self.forked_from} if self.forked_from is not None else {}),
            **({"budgetUsd": self.budget_usd} if self.budget_usd is not None else {}),
            **({"projectTrust": self.project_trust} if self.project_trust is not None else {}),
            **({"device": self.device} if self.device is not None else {}),
            **self.extra,
        }

    @classmethod
    def from_record(cls, sessions_dir: Path, record: dict) -> "Session":
        session_id = record["sessionId"]
        if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
            raise ValueError("bad session id")
        known = {
            "sessionId",
            "mode",
            "repoId",
            "worktreePath",
            "createdAt",
            "lastActivityAt",
            "name",
            "provider",
            "modelId",
            "systemPrompt",
            "includeNativeTools",
            "device",
            "permissionMode",
            "permissionRules",
            "permissionGrants",
            "lastSeq",
            "repoSource",
            "repoPath",
            "branch",
            "baseBranch",
            "localClone",
            "forkedFrom",
            "budgetUsd",
            "projectTrust",
        }
        # One wrong entry must not break listing everyone's sessions.
        if record.get("mode") not in ("chat", "code"):
            raise ValueError(f"bad mode {record.get('mode')!r:.40}")
        for key in ("worktreePath", "createdAt"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise ValueError(f"{key} is not a string")
        for key in (
            "lastActivityAt",
            "repoId",
            "name",
            "provider",
            "modelId",
            "systemPrompt",
            "device",
            "forkedFrom",
        ):
            if record.get(key) is not None and not isinstance(record[key], str):
                raise ValueError(f"{key} is not a string")
        return cls(
            id=session_id,
            mode=record["mode"],
            directory=sessions_dir / session_id,
            cwd=Path(record["worktreePath"]),
            created_at=record["createdAt"],
            last_activity_at=record.get("lastActivityAt") or record["createdAt"],
            repo_id=record.get("repoId"),
            name=record.get("name"),
            provider=record.get("provider"),
            model_id=record.get("modelId"),
            system_prompt=record.get("systemPrompt"),
            include_native_tools=bool(record.get("includeNativeTools")),
            device=record.get("device"),
            permissions=_permissions(record),
            checkout=CheckoutRecord.from_json(record),
            forked_from=record.get("forkedFrom"),
            budget_usd=_budget(record.get("budgetUsd")),
            project_trust=record.get("projectTrust")
            if type(record.get("projectTrust")) is bool
            else None,
            extra={k: v for k, v in record.items() if k not in known},
            last_seq=record["lastSeq"] if type(record.get("lastSeq")) is int else 0,
        )

    def idle(self) -> bool:
        """Its agent could be stopped without anyone noticing (it restarts on demand)."""
        return (
            self.lifecycle.status is AgentStatus.RUNNING
            and not self.streaming
            and not self.stream.connections()
        )

    def status(self) -> str:
        """``starting``, ``running`` or ``stopped``: what ``session.list`` has always said."""
        return self.lifecycle.status.listed


def _permissions(record: dict) -> Permissions:
    """A record's permissions; one saved before modes existed runs in ``full`` mode."""
    try:
        mode = parse_mode(record.get("permissionMode", "full"))
        rules = parse_rules(record.get("permissionRules") or [])
    except InvalidParams as e:
        raise ValueError(e.message) from None
    return Permissions(mode=mode, rules=rules, grants=parse_grants(record.get("permissionGrants")))


def _budget(value) -> float | None:
    """A recorded budget: a positive number, else none (a bad entry loses only its budget)."""
    if type(value) in (int, float) and 0 < value < float("inf"):
        return float(value)
    return None
