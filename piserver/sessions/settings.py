"""
``SessionSettings``: what the server's options say of sessions (their data directory,
journals, agents, warm pool, permissions), gathered in one record that ``service.py``
builds from the configuration and hands to the ``SessionManager``.
"""

from pathlib import Path

import attr

from piserver.agents.nativetools import DEFAULT_CALL_TIMEOUT
from piserver.agents.projecttrust import DEFAULT_PROJECT_TRUST_TIMEOUT, TrustPolicy
from piserver.sessions.agents import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_AGENTS
from piserver.sessions.approvals import DEFAULT_APPROVAL_TIMEOUT
from piserver.sessions.journal import JournalLimits
from piserver.sessions.permissions import PermissionMode


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class SessionSettings:
    # The server's data directory: sessions live in its ``sessions/``.
    data_dir: Path = attr.ib(converter=Path)
    journal_limits: JournalLimits = attr.ib(factory=JournalLimits)
    # Seconds message_update deltas are merged over for clients in "delta" mode.
    merge_window: float = 0.03
    max_agents: int = DEFAULT_MAX_AGENTS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    native_tool_timeout: float = DEFAULT_CALL_TIMEOUT
    # Agents started ahead of the sessions they will serve (0: none).
    warm_agents: int = 0
    # The mode of a session created without one (--permission-mode).
    permission_mode: PermissionMode = attr.ib(default=PermissionMode.FULL, converter=PermissionMode)
    approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT
    # pi's project trust (--project-trust, --project-trust-timeout).
    project_trust: TrustPolicy = attr.ib(default=TrustPolicy.ASK, converter=TrustPolicy)
    project_trust_timeout: float = DEFAULT_PROJECT_TRUST_TIMEOUT

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "sessions"
