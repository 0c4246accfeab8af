"""
What a code session changed: its checkout against its base, untracked files
included, read without touching the index the agent works with.

The working tree is staged into a temporary index (a copy of the agent's, so
unchanged files are not hashed again) in a git directory of the server's own
(:mod:`piserver.repos.servergit`), written as a tree and compared with the merge
base of the session's base branch and its own branch (by name, not the agent's
HEAD): committed, staged, unstaged and new files alike.  The tree id also tells whether a run
changed anything, for the ``files_changed`` event.
"""

import weakref

from twisted.internet import defer
from twisted.logger import Logger

from piserver.common.errors import GitError, InvalidParams
from piserver.repos.changes import cut, file_list
from piserver.repos.servergit import DIFF_OPTIONS, ServerGit

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_CONTEXT_LINES = 3

_DIFF_OPTIONS = [*DIFF_OPTIONS, "-M"]


def base_ref(session, base: str | None) -> str:
    """The branch (or commit) a session's changes are measured against."""
    if base is None and session.checkout is not None:
        base = session.checkout.base_branch
    ref = base
    if not isinstance(ref, str) or not ref or ref.startswith("-"):
        raise InvalidParams(f'"base" must be a branch or commit name, not {ref!r}')
    return ref


class Snapshots:
    """
    ``git`` a :class:`piserver.repos.git.Git`; ``in_thread(f, *args)`` runs blocking file
    work off the reactor thread; ``publish(session, type, payload)`` sends an event;
    ``confinement`` the session's sandbox for staging (see ``ServerGit``).
    Every git runs through :class:`piserver.repos.servergit.ServerGit`: nothing the agent
    wrote into the checkout's ``.git`` or ``.gitattributes`` runs or redirects it.
    """

    log = Logger()

    def __init__(self, git, in_thread, publish, confinement=None):
        self.server_git = ServerGit(git, in_thread, confinement)
        self._publish = publish
        # The checkout's tree at the end of its last run (in memory: after a restart
        # the first run end compares with the base's).
        self._last_trees = weakref.WeakKeyDictionary()
        self._run_end_locks = weakref.WeakKeyDictionary()

    async def merge_base(self, session, base: str | None = None, shadow=None) -> str:
        """The commit where the session's branch left ``base``."""
        ref = base_ref(session, base)
        commit = await self.server_git.resolve(session, ref)
        if commit is None:
            raise InvalidParams(f"the checkout has no branch or commit {ref!r}")
        if shadow is None:
            async with self.server_git.shadow(session) as shadow:
                return await self._merge_base(shadow, commit)
        return await self._merge_base(shadow, commit)

    @staticmethod
    async def _merge_base(shadow, commit: str) -> str:
        _, out = await shadow.run(["merge-base", commit, shadow.head], "git merge-base")
        return out.decode().strip()

    async def tree(self, session, shadow) -> str:
        """The id of a tree holding the checkout's working files as they are now."""
        return await shadow.stage_all(await self.server_git.agent_index(session))

    async def files(
        self, shadow, base_commit: str, tree: str, paths: list[str] | None = None
    ) -> list[dict]:
        pathspec = ["--", *paths] if paths else []
        _, names = await shadow.run(
            [
                "--literal-pathspecs",
                "diff",
                *_DIFF_OPTIONS,
                "--name-status",
                "-z",
                base_commit,
                tree,
                *pathspec,
            ],
            "git diff",
        )
        _, counts = await shadow.run(
            [
                "--literal-pathspecs",
                "diff",
                *_DIFF_OPTIONS,
                "--numstat",
                "-z",
                base_commit,
                tree,
                *pathspec,
            ],
            "git diff",
        )
        return file_list(names.decode("utf-8", "replace"), counts.decode("utf-8", "replace"))

    async def diff(
        self,
        session,
        base: str | None = None,
        paths: list[str] | None = None,
        context_lines: int = DEFAULT_CONTEXT_LINES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> dict:
        """``{base, files, diff, truncated}`` (see docs/protocol.md, session.diff)."""
        async with self.server_git.shadow(session) as shadow:
            return await self._diff(shadow, session, base, paths, context_lines, max_bytes)

    async def _diff(self, shadow, session, base, paths, context_lines, max_bytes) -> dict:
        base_commit = await self.merge_base(session, base, shadow)
        tree = await self.tree(session, shadow)
        files = await self.files(shadow, base_commit, tree, paths)
        pathspec = ["--", *paths] if paths else []
        _, text = await shadow.run(
            [
                "--literal-pathspecs",
                "diff",
                *_DIFF_OPTIONS,
                f"-U{context_lines}",
                base_commit,
                tree,
                *pathspec,
            ],
            "git diff",
            # One byte more than is shown tells that there was more.
            stdout_limit=max_bytes + 1,
        )
        diff, truncated = cut(text, max_bytes)
        return {"base": base_commit, "files": files, "diff": diff, "truncated": truncated}

    def run_ended(self, session) -> defer.Deferred:
        """After a run: ``files_changed`` if the run changed the checkout."""
        lock = self._run_end_locks.setdefault(session, defer.DeferredLock())
        # One at a time per session, so each run is compared with the one before.
        done = lock.run(lambda: defer.Deferred.fromCoroutine(self._report_changes(session)))
        done.addErrback(self._report_failed, session)
        return done

    async def _report_changes(self, session) -> None:
        if session.deleted:
            return
        async with self.server_git.shadow(session) as shadow:
            now = await self.tree(session, shadow)
            base_commit = await self.merge_base(session, None, shadow)
            before = self._last_trees.get(session)
            if before is None:
                # The first run end seen: a checkout that is not its base has changed
                # (even if the agent committed its edits itself).
                _, out = await shadow.run(["rev-parse", f"{base_commit}^{{tree}}"], "git rev-parse")
                before = out.decode().strip()
            self._last_trees[session] = now
            if now == before or session.deleted:
                return
            files = await self.files(shadow, base_commit, now)
        self._publish(
            session, "files_changed", {"type": "files_changed", "base": base_commit, "files": files}
        )

    def _report_failed(self, failure, session) -> None:
        if session.deleted:
            return  # its checkout went away under the snapshot
        if failure.check(GitError, InvalidParams):
            self.log.warn(
                "session {session_id}: could not tell what the run changed: {error}",
                session_id=session.id,
                error=failure.value.message,
            )
        else:
            self.log.failure(
                "session {session_id}: files_changed failed", failure, session_id=session.id
            )
