"""
Errors that reach a client, each with a stable ``code``.

A handler raises one of these to answer a request with ``ok: false``; anything
else it raises is logged with its traceback and answered as ``internal_error``.
"""

import attr


@attr.s(auto_exc=True)
class RpcError(Exception):
    """Base: ``code`` is a class attribute, ``message`` says what was wrong."""

    code = "internal_error"
    message: str = attr.ib()

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


class ParseError(RpcError):
    code = "parse_error"


class InvalidRequest(RpcError):
    code = "invalid_request"


class UnknownMethod(RpcError):
    code = "unknown_method"


class InvalidParams(RpcError):
    code = "invalid_params"


class NotFound(RpcError):
    code = "not_found"


class InvalidState(RpcError):
    code = "invalid_state"


class InternalError(RpcError):
    code = "internal_error"


class AgentCommandFailed(RpcError):
    """pi answered a command with ``success: false``; ``message`` is pi's."""

    code = "agent_error"


class AgentTimeout(RpcError):
    """pi did not answer a command in time."""

    code = "agent_timeout"


class AgentExited(RpcError):
    """The agent process ended while a command was pending (or before it was sent)."""

    code = "agent_exited"


class AgentFailed(RpcError):
    """The session's agent keeps crashing; calls fail until it is deleted or re-created."""

    code = "agent_failed"


class GithubError(RpcError):
    code = "github_error"


class GitError(RpcError):
    code = "git_error"


class RateLimited(RpcError):
    code = "rate_limited"


class TooManySessions(RpcError):
    code = "too_many_sessions"


class StorageFull(RpcError):
    code = "storage_full"


class IdempotencyConflict(RpcError):
    """A request reused a key that an earlier request with other params had."""

    code = "idempotency_conflict"


@attr.s(auto_exc=True)
class RememberedError(RpcError):
    """An error answer read back from the idempotency key log: its code as it was sent."""

    code: str = attr.ib(kw_only=True, default="internal_error")


class BudgetExceeded(RpcError):
    """A budget covering the session is spent: no new run until it resets or is raised."""

    code = "budget_exceeded"


class InvalidSessionFile(RpcError):
    """A pi session file to import (or export) is malformed, oversized or not a file."""

    code = "invalid_session_file"


class ResponseTooLarge(RpcError):
    """The answer would not fit in one frame of ``--max-frame-size`` bytes."""

    code = "response_too_large"


class Forbidden(RpcError):
    """The token lacks the scope a method needs (named in ``message``), or the thing asked
    for is out of its reach."""

    code = "forbidden"
