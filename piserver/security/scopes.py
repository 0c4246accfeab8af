"""
What a token may do (its scopes) and which sessions it may see (its reach).

``METHOD_SCOPES`` is the one table naming the scope every wire method needs;
``AccessGuard`` (access.py) enforces it before any handler runs. A method that is
not in the table is refused to every device token, so a method added later is
closed until it is given a scope here. The server token holds every scope and
may also call methods outside the table (pi commands passed through by name).
"""

import enum

import attr


class Scope(enum.StrEnum):
    READ = "read"
    PROMPT = "prompt"
    APPROVE = "approve"
    SHIP = "ship"
    MANAGE = "manage"


ALL_SCOPES = frozenset(Scope)
# What ``pi-server token add`` gives without --scope, and what a device token from before
# scopes existed holds: everything. Token management is no scope: only the server token
# (and whoever can run ``pi-server token`` on the machine) has it.
DEFAULT_SCOPES = ALL_SCOPES

_R, _P, _A, _S, _M = Scope.READ, Scope.PROMPT, Scope.APPROVE, Scope.SHIP, Scope.MANAGE

# Every method and the scope it needs; None: any valid token (saying hello).
METHOD_SCOPES: dict[str, Scope | None] = {
    "hello": None,
    # read: list, attach, events, messages, state, diff, files
    "repos.list": _R,
    "session.list": _R,
    "session.attach": _R,
    "session.detach": _R,
    "session.diff": _R,
    "session.files": _R,
    "session.read_file": _R,
    "get_state": _R,
    "get_messages": _R,
    "get_available_models": _R,
    "get_available_thinking_levels": _R,
    "get_session_stats": _R,
    "get_commands": _R,
    "get_last_assistant_text": _R,
    "get_fork_messages": _R,
    "get_entries": _R,
    "get_tree": _R,
    "export_html": _R,
    "usage.report": _R,  # issue 25
    "session.export": _R,  # issue 26
    "push.subscribe": _R,  # issue 28: a watcher may be told what it may watch
    "push.unsubscribe": _R,
    "push.list": _R,
    "session.viewing": _R,
    # prompt: prompt, steer, follow up, abort, bash, native tool and dialog answers
    "prompt": _P,
    "steer": _P,
    "follow_up": _P,
    "abort": _P,
    "clear_queue": _P,
    "abort_retry": _P,
    "compact": _P,
    "bash": _P,
    "abort_bash": _P,
    "native_tool_response": _P,
    "extension_ui_response": _P,
    # approve: answer approvals
    "approval.respond": _A,  # issue 23
    # ship: commit, push, pull request
    "session.commit": _S,
    "session.push": _S,
    "session.pull_request": _S,
    # manage: create, delete, fork, model and mode changes
    "session.create": _M,
    "session.delete": _M,
    "session.import": _M,  # issue 26
    # The machine's own pi sessions: browsing them is the first step of importing one.
    "sessions.importable": _M,
    "session.set_permission_mode": _M,  # issue 23
    "session.set_budget": _M,  # issue 25
    "fork": _M,
    "clone": _M,
    "new_session": _M,
    "clear_conversation": _M,
    "switch_session": _M,
    "set_session_name": _M,
    "set_model": _M,
    "cycle_model": _M,
    "set_thinking_level": _M,
    "cycle_thinking_level": _M,
    "set_auto_compaction": _M,
    "set_auto_retry": _M,
    "set_steering_mode": _M,
    "set_follow_up_mode": _M,
}

# Methods about the machine's own pi sessions, which belong to no repository the server
# knows: out of reach of a token limited to repositories.
MACHINE_SESSIONS = frozenset({"sessions.importable", "session.import"})

# Read-scope methods that still change something the audit log should show.
_CHANGING_READS = frozenset({"push.subscribe", "push.unsubscribe"})


def changes_something(method: str) -> bool:
    """Whether a request for ``method`` changes something (and so is audited): every
    method outside ``read`` and the table, and a few reads that keep state."""
    if method in _CHANGING_READS:
        return True
    return method not in METHOD_SCOPES or METHOD_SCOPES[method] not in (None, Scope.READ)


def parse_scopes(text: str) -> frozenset[Scope]:
    """``read,prompt`` as scopes; ValueError naming what is not a scope."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("give at least one scope: " + ", ".join(Scope))
    unknown = [name for name in names if name not in Scope.__members__.values()]
    if unknown:
        raise ValueError(f"not a scope: {', '.join(unknown)} (scopes: {', '.join(Scope)})")
    return frozenset(Scope(name) for name in names)


def scope_list(scopes) -> list[str]:
    """Scopes in the table's order (read … manage), as names."""
    return [scope.value for scope in Scope if scope in scopes]


@attr.frozen
class Grant:
    """
    What one token may do. ``repos`` None: every repository; else only sessions of those
    repositories (never chat sessions, which have none). ``own_sessions``: only the
    sessions this device created. ``server`` marks the server token (all of it, and the
    methods outside the table).
    """

    device: str | None = None
    scopes: frozenset = DEFAULT_SCOPES
    repos: frozenset | None = None
    own_sessions: bool = False
    server: bool = False

    @classmethod
    def server_token(cls) -> "Grant":
        return cls(device=None, scopes=ALL_SCOPES, server=True)

    @property
    def unrestricted(self) -> bool:
        return self.repos is None and not self.own_sessions

    def may_use_repo(self, repo_id: str | None) -> bool:
        return self.repos is None or repo_id in self.repos

    def may_see(self, session) -> bool:
        """Whether the session (anything with ``repo_id`` and ``device``) is in reach.
        Sessions from before reach existed have no device: only unrestricted tokens
        see them."""
        if self.unrestricted:
            return True
        if not self.may_use_repo(session.repo_id):
            return False
        return not self.own_sessions or (
            self.device is not None and getattr(session, "device", None) == self.device
        )

    def describe(self) -> dict:
        """The ``device`` object of the hello answer."""
        return {
            "name": self.device,
            "scopes": scope_list(self.scopes),
            "repos": sorted(self.repos) if self.repos is not None else None,
            "ownSessions": self.own_sessions,
        }
