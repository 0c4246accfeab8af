"""
The wire methods on a code session's checkout: ``session.diff``,
``session.files``, ``session.read_file``, ``session.commit``, ``session.push``
and ``session.pull_request``.  Handlers check their params; chat sessions are
answered ``invalid_state``.
"""

from piserver.api import params as check
from piserver.common.errors import InvalidParams, InvalidState
from piserver.repos.paths import DEFAULT_READ_BYTES, list_directory, read_file, relative_path
from piserver.repos.snapshot import DEFAULT_CONTEXT_LINES, DEFAULT_MAX_BYTES

MAX_CONTEXT_LINES = 1000
MAX_BYTES_LIMIT = 16 * 1024 * 1024
MAX_PATHS = 1000


def _paths(params: dict) -> list[str] | None:
    value = params.get("paths")
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_PATHS:
        raise InvalidParams(f'"paths" must be a list of 1 to {MAX_PATHS} paths')
    paths = [relative_path(path, "paths") for path in value]
    if "" in paths:
        raise InvalidParams('"paths" must name files or directories, not the whole checkout')
    return paths


class WorkspaceMethods:
    """``sessions`` the SessionManager; ``in_thread(f, *args)`` runs blocking file reads."""

    def __init__(self, sessions, snapshots, shipping, in_thread):
        self._sessions = sessions
        self._snapshots = snapshots
        self._shipping = shipping
        self._in_thread = in_thread

    def table(self) -> dict:
        return {
            "session.diff": self.diff,
            "session.files": self.files,
            "session.read_file": self.read_file,
            "session.commit": self.commit,
            "session.push": self.push,
            "session.pull_request": self.pull_request,
        }

    def _code_session(self, request):
        session = self._sessions.get(check.target_session_id(request))
        if session.mode != "code":
            raise InvalidState(
                f"{request.method} works on code sessions; {session.id} is a "
                "chat session, which has no repository"
            )
        return session

    async def diff(self, connection, request):
        params = request.params
        session = self._code_session(request)
        base = check.string(params, "base", required=False)
        paths = _paths(params)
        context_lines = check.count(
            params, "contextLines", DEFAULT_CONTEXT_LINES, 0, MAX_CONTEXT_LINES
        )
        max_bytes = check.count(params, "maxBytes", DEFAULT_MAX_BYTES, 1, MAX_BYTES_LIMIT)
        return await self._snapshots.diff(session, base, paths, context_lines, max_bytes)

    async def files(self, connection, request):
        session = self._code_session(request)
        path = check.string(request.params, "path", required=False) or ""
        return await self._in_thread(list_directory, session.cwd, path)

    async def read_file(self, connection, request):
        session = self._code_session(request)
        path = check.string(request.params, "path")
        max_bytes = check.count(request.params, "maxBytes", DEFAULT_READ_BYTES, 1, MAX_BYTES_LIMIT)
        return await self._in_thread(read_file, session.cwd, path, max_bytes)

    async def commit(self, connection, request):
        params = request.params
        session = self._code_session(request)
        message = check.text(params, "message", nonempty=True)
        paths = _paths(params)
        everything = check.boolean(params, "all", True)
        return await self._shipping.commit(session, message, paths, everything)

    async def push(self, connection, request):
        session = self._code_session(request)
        remote_branch = check.string(request.params, "remoteBranch", required=False)
        return await self._shipping.push(session, remote_branch)

    async def pull_request(self, connection, request):
        params = request.params
        session = self._code_session(request)
        title = check.text(params, "title", nonempty=True)
        body = check.text(params, "body", required=False)
        draft = check.boolean(params, "draft", False)
        base = check.string(params, "base", required=False)
        remote_branch = check.string(params, "remoteBranch", required=False)
        return await self._shipping.pull_request(session, title, body, draft, base, remote_branch)
