"""
Desk to phone and back: a pi session started in a terminal becomes a server session
(``session.import``), and a server session goes back to the terminal
(``session.export``).

An import validates a copy of the file (pifiles.copy_validated) before any session
exists, then creates the session with that copy as its conversation (header ``cwd``
rewritten, so ``pi --continue`` resumes it). A session's cwd inside a repository of
``repos.json`` makes it a code session whose checkout starts at that repository's
current branch, with the original working tree's uncommitted changes applied when
asked. A failure at any step leaves no session (the manager tears a failed create
down) and no staged copy; the original file is only ever read.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from twisted.logger import Logger

from piserver.common.errors import GithubError, InvalidState
from piserver.common.files import write_bytes_atomic
from piserver.sessions import pifiles
from piserver.sessions.export import MAX_EXPORT_BYTES, export_session
from piserver.sessions.manager import _name_from

IMPORT_MODES = ("auto", "chat")
# The original working tree's changes (git diff --binary HEAD) applied at most.
MAX_PATCH_BYTES = 16 * 1024 * 1024
STAGING = "imports"


class SessionImporter:
    """
    ``sessions`` the SessionManager; ``importable`` an ImportableSessions; ``repos`` the
    RepoCatalog (None: chat only); ``git`` a Git; ``in_thread(f, *args)`` runs blocking
    file work off the reactor.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        data_dir: Path,
        sessions,
        importable,
        repos,
        git,
        in_thread,
        limits: pifiles.Limits | None = None,
        max_export: int = MAX_EXPORT_BYTES,
    ):
        self._reactor = reactor
        self._staging = Path(data_dir) / STAGING
        self._sessions = sessions
        self.importable = importable
        self._repos = repos
        self._git = git
        self._in_thread = in_thread
        self._limits = limits or pifiles.Limits()
        self._max_export = max_export

    def remove_staged(self) -> None:
        """At start: copies an import interrupted by a crash left behind."""
        if self._staging.is_dir():
            for path in self._staging.iterdir():
                if path.is_file() or path.is_symlink():
                    path.unlink(missing_ok=True)

    async def listing(self, cursor: str | None) -> dict:
        return await self._in_thread(self.importable.page, cursor)

    async def import_session(self, connection, import_id: str, mode: str, with_changes: bool):
        """``{sessionId, mode, repoId?}`` of a new session holding the conversation."""
        source = await self._in_thread(self.importable.resolve, import_id)
        staged = await self._in_thread(self._stage, source)
        try:
            header = await self._in_thread(pifiles.copy_validated, source, staged, self._limits)
            summary = await self._in_thread(pifiles.summarize, staged, self._limits.max_line)
            repo = await self._repo_of(header.cwd) if mode == "auto" else None

            def seed(session) -> None:
                # pi resumes only a conversation whose header names its working directory.
                pifiles.with_header(
                    staged, session.pi_session_dir / source.name, cwd=str(session.cwd)
                )

            async def prepare(session) -> None:
                await self._apply_changes(repo, session)

            session = await self._sessions.create(
                connection,
                "code" if repo is not None else "chat",
                repo=repo,
                seed=seed,
                prepare=prepare if repo is not None and with_changes else None,
            )
        finally:
            staged.unlink(missing_ok=True)
        session.extra["importedCwd"] = header.cwd
        self._sessions.rename(session, _name_from(summary.first_prompt or ""))
        self.log.info(
            "session {session_id} imported ({mode}) from a pi session of {cwd}",
            session_id=session.id,
            mode=session.mode,
            cwd=header.cwd,
        )
        result = {"sessionId": session.id, "mode": session.mode}
        if session.repo_id is not None:
            result["repoId"] = session.repo_id
        return result

    async def export(self, session) -> dict:
        record = session.record()
        file_name, content = await self._in_thread(
            export_session, session.directory, record, self._reactor.seconds(), self._max_export
        )
        return {"fileName": file_name, "jsonl": content.decode("utf-8", "replace")}

    def _stage(self, source: Path) -> Path:
        self._staging.mkdir(mode=0o700, exist_ok=True)
        return self._staging / f"{uuid.uuid4().hex}-{source.name}"

    async def _repo_of(self, cwd: str) -> dict | None:
        """The local repository of ``repos.json`` holding ``cwd`` (the innermost one), on
        the branch its working tree has now; None when there is none."""
        if self._repos is None:
            return None
        try:
            listing = await self._repos.list()
        except GithubError:
            return None
        inside = [
            repo
            for repo in listing["repos"]
            if repo.get("source") == "local"
            and (cwd == repo["path"] or cwd.startswith(repo["path"].rstrip("/") + "/"))
        ]
        if not inside:
            return None
        repo = max(inside, key=lambda r: len(r["path"]))
        current = await self._git.current_branch(repo["path"])
        return {**repo, "defaultBranch": current} if current else repo

    async def _apply_changes(self, repo: dict, session) -> None:
        """The original working tree's uncommitted changes (to tracked files), applied to
        the new checkout; untracked files are not taken."""
        _code, patch = await self._git.run(
            repo["path"],
            ["diff", "--binary", "HEAD"],
            "git diff (the uncommitted changes)",
            stdout_limit=MAX_PATCH_BYTES + 1,
        )
        if len(patch) > MAX_PATCH_BYTES:
            raise InvalidState(
                f"the uncommitted changes in {repo['name']} are over "
                f"{MAX_PATCH_BYTES // (1024 * 1024)} MB: import without withChanges"
            )
        if not patch.strip():
            return
        patch_file = session.directory / "changes.patch"
        await self._in_thread(write_bytes_atomic, patch_file, patch)
        try:
            await self._git.run(
                str(session.cwd),
                ["apply", "--binary", "--whitespace=nowarn", str(patch_file)],
                "git apply (the uncommitted changes)",
            )
        finally:
            await self._in_thread(os.unlink, patch_file)
