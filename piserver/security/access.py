"""
The one place where a request's token is checked, before any handler runs: the
scope its method needs (scopes.METHOD_SCOPES) and the reach of the token (which
sessions and repositories it may touch). Every decision on a request that
changes something is then handed to a ``DecisionSink`` (the audit log).
"""

from collections.abc import Mapping
from typing import Protocol

import attr

from piserver.common.errors import Forbidden, NotFound
from piserver.security.scopes import (
    MACHINE_SESSIONS,
    METHOD_SCOPES,
    Grant,
    changes_something,
    scope_list,
)

# Method names are the client's: this much of one is kept in a refusal or a record.
_NAME_LIMIT = 80


class DecisionSink(Protocol):
    def decided(
        self,
        device: str | None,
        method: str,
        session_id: str | None,
        repo_id: str | None,
        ok: bool,
        error: str | None,
    ) -> None:
        """One request that changes something was answered (``error``: its code)."""


class SessionTable(Protocol):
    # The session manager's live sessions by id (objects with ``repo_id`` and ``device``).
    sessions: Mapping


@attr.frozen
class Admission:
    """What the guard learnt of an admitted request, for its record: the session it is
    about (None when it names none) and that session's repository."""

    session_id: str | None
    repo_id: str | None


def grant_of(connection) -> Grant:
    """The connection's grant; a connection that has none came without authentication."""
    grant = getattr(connection, "grant", None)
    return grant if grant is not None else Grant.server_token()


class AccessGuard:
    """``sessions`` (optional) to find whose a named session is; ``sink`` (optional) to
    record decisions."""

    def __init__(self, sessions: SessionTable | None = None, sink: DecisionSink | None = None):
        self._sessions = sessions
        self._sink = sink

    def admit(self, connection, request) -> Admission:
        """Raise ``Forbidden`` (the scope is missing, or the repository is out of reach) or
        ``NotFound`` (a session out of reach, as if it did not exist); else what the
        request is about."""
        grant = grant_of(connection)
        method = request.method
        if method in METHOD_SCOPES:
            needed = METHOD_SCOPES[method]
            if needed is not None and needed not in grant.scopes:
                raise Forbidden(
                    f"{method} needs the {needed} scope; device {grant.device} has "
                    f"{', '.join(scope_list(grant.scopes)) or 'none'}"
                )
        elif not grant.server:
            raise Forbidden(
                f"{method[:_NAME_LIMIT]!r} has no scope: only the server token may call it"
            )
        if not grant.unrestricted and method != "session.detach":
            for named in {request.session_id, _params_session(request)} - {None}:
                other = self._session(named)
                if other is not None and not grant.may_see(other):
                    raise NotFound(f"no session {named[:80]!r}")
            if method in MACHINE_SESSIONS and grant.repos is not None:
                raise Forbidden(
                    f"device {grant.device} may only work on repositories: the pi sessions "
                    "of this machine are out of its reach"
                )
            if method == "session.create" and grant.repos is not None:
                repo_id = request.params.get("repoId")
                if not isinstance(repo_id, str) or not grant.may_use_repo(repo_id):
                    raise Forbidden(
                        f"device {grant.device} may only work on repositories "
                        f"{', '.join(sorted(grant.repos))}"
                    )
        return self._about(request)

    def decided(self, connection, request, admission: Admission | None, ok: bool, value) -> None:
        """Record the answer to a request that changes something (a refusal too)."""
        if self._sink is None or not changes_something(request.method):
            return
        if admission is None:
            # Refused before it was admitted: what it was about, for the operator's eyes.
            admission = self._about(request)
        session_id, repo_id = admission.session_id, admission.repo_id
        if ok and session_id is None and isinstance(value.get("sessionId"), str):
            # A new session (session.create): the answer names it.
            session_id = value["sessionId"]
            created = self._session(session_id)
            if created is not None:
                repo_id = created.repo_id
        self._sink.decided(
            grant_of(connection).device,
            request.method[:_NAME_LIMIT],
            session_id,
            repo_id,
            ok,
            None if ok else value.code,
        )

    def _about(self, request) -> Admission:
        session_id = _named_session(request)
        session = self._session(session_id)
        if session is not None:
            return Admission(session.id, session.repo_id)
        repo_id = request.params.get("repoId") if request.method == "session.create" else None
        return Admission(session_id, repo_id if isinstance(repo_id, str) else None)

    def _session(self, session_id):
        if self._sessions is None or session_id is None:
            return None
        return self._sessions.sessions.get(session_id)


def _params_session(request) -> str | None:
    value = request.params.get("sessionId")
    return value if isinstance(value, str) and value else None


def _named_session(request) -> str | None:
    """The session a request is about: ``params.sessionId`` (``session.*`` methods' target),
    else the envelope's."""
    return _params_session(request) or request.session_id
