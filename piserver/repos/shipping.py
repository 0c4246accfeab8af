"""
Shipping a code session's work: commit on its branch ``pi/session-<id>``, push
that branch to GitHub, open a pull request.

Nothing the agent wrote into its checkout's ``.git`` takes part
(:mod:`piserver.repos.servergit`): the commit is made with ``commit-tree`` in a git
directory of the server's own and moves the session's branch by name with
``update-ref`` (a ``HEAD`` the agent pointed elsewhere is not followed); no hook,
fsmonitor or filter runs.  The GitHub token goes only to the one ``git push``
process, through its environment (see :meth:`piserver.repos.git.Git.run`); that push
runs from the server's git directory too, so no proxy, ``insteadOf`` or hook of
the agent's sees it, and it goes to the repository's clone URL as GitHub lists it,
not to whatever ``origin`` the agent may have set.
"""

import re
import weakref

from twisted.internet import defer
from twisted.logger import Logger

from piserver.common.errors import GitError, InvalidParams, InvalidState
from piserver.repos.changes import file_list
from piserver.repos.checkouts import RepoSource
from piserver.repos.paths import relative_path
from piserver.repos.snapshot import Snapshots

FALLBACK_AUTHOR = ("pi-server", "pi-server@localhost")
PUSH_TIMEOUT = 300.0
_AUTHOR = re.compile(r"\s*([^<>]*?)\s*<([^<>\s]+)>\s*\Z")


def parse_author(text: str) -> tuple[str, str]:
    """``"Name <mail>"`` → ``(name, mail)``; ValueError if it is not that."""
    match = _AUTHOR.match(text)
    if not match or not match.group(1):
        raise ValueError(f'{text!r} is not of the form "Name <mail>"')
    return match.group(1), match.group(2)


def is_github_session(session) -> bool:
    return session.checkout is not None and session.checkout.source is RepoSource.GITHUB


class Shipping:
    """
    ``git`` a :class:`piserver.repos.git.Git`, ``snapshots`` the :class:`Snapshots`,
    ``repos`` the repo catalog (for a GitHub session's clone URL), ``github`` a
    :class:`piserver.repos.github.GithubClient` or None (no token), ``token`` the GitHub
    token, ``author`` ``(name, mail)`` or None (the machine's git config, else
    :data:`FALLBACK_AUTHOR`), ``publish(session, type, payload)`` sends an event,
    ``clones`` the :class:`piserver.repos.localclone.LocalClones` that carries a local
    session's commit into its source repository.
    """

    log = Logger()

    def __init__(
        self,
        git,
        snapshots: Snapshots,
        repos,
        github,
        token: str | None,
        publish,
        author: tuple[str, str] | None = None,
        push_timeout: float = PUSH_TIMEOUT,
        clones=None,
    ):
        self._clones = clones
        self._git = git
        self._snapshots = snapshots
        self._repos = repos
        self._github = github
        self._token = token
        self._publish = publish
        self._author = author
        self._push_timeout = push_timeout
        self._locks = weakref.WeakKeyDictionary()

    def _serialized(self, session, work):
        """Run ``work()`` (a coroutine) after the session's previous commit/push/PR."""
        lock = self._locks.setdefault(session, defer.DeferredLock())
        return lock.run(lambda: defer.Deferred.fromCoroutine(work()))

    def _progress(self, session, stage: str, text: str) -> None:
        self._publish(
            session,
            "session_progress",
            {"type": "session_progress", "stage": stage, "message": text},
        )

    @property
    def _server_git(self):
        return self._snapshots.server_git

    # -- commit ---------------------------------------------------------------

    def commit(
        self, session, message: str, paths: list[str] | None = None, everything: bool = True
    ) -> defer.Deferred:
        """``{commit, files}``; InvalidState when there is nothing to commit."""
        return self._serialized(session, lambda: self._commit(session, message, paths, everything))

    async def _commit(self, session, message, paths, everything) -> dict:
        branch = session.checkout.branch
        self._progress(session, "commit", f"committing on {branch}")
        pathspec = ["--", *[relative_path(p, "paths") for p in paths]] if paths else []
        server_git = self._server_git
        agent_index = await server_git.agent_index(session)
        async with server_git.shadow(session) as shadow:
            parent = shadow.head
            if paths:
                # Only those paths change: the rest stays as the branch has it.
                await shadow.seed_index(None)
                await shadow.add(pathspec)
            elif everything:
                await shadow.seed_index(agent_index)
                await shadow.add()
            else:
                await shadow.seed_index(agent_index)
            _, out = await shadow.run(["write-tree"], "git write-tree")
            tree = out.decode().strip()
            _, out = await shadow.run(["rev-parse", f"{parent}^{{tree}}"], "git rev-parse")
            if tree == out.decode().strip():
                if paths:
                    raise InvalidState("nothing to commit: those paths have no changes")
                if everything:
                    raise InvalidState("nothing to commit: the checkout has no changes")
                raise InvalidState("nothing to commit: nothing is staged")
            _, out = await shadow.run(
                ["commit-tree", tree, "-p", parent, "-m", message],
                "git commit-tree",
                extra_env=await self._identity(session),
            )
            commit = out.decode().strip()
            if self._publishes(session):
                # Into the source repository first: if git refuses it there, nothing moved.
                await self._clones.publish(session, commit)
            await server_git.real(
                session,
                ["update-ref", "-m", "pi-server: commit", f"refs/heads/{branch}", commit, parent],
                "git update-ref",
            )
            # The agent's index learns what was committed (no work tree is read). Inside
            # the session's sandbox: its path is the agent's to name, and a link there
            # must not make the server write a file anywhere of its own.
            # The commit is made whatever happens to that index: a failure is logged.
            try:
                if paths:
                    await shadow.run(
                        [
                            *("--literal-pathspecs", "reset", "--quiet", "--no-refresh"),
                            *(commit, *pathspec),
                        ],
                        "git reset",
                        index=agent_index,
                        confined=True,
                    )
                elif everything:
                    await shadow.run(
                        ["read-tree", commit], "git read-tree", index=agent_index, confined=True
                    )
            except GitError as e:
                self.log.warn(
                    "session {session_id}: committed, but its checkout's index was not "
                    "updated: {error}",
                    session_id=session.id,
                    error=e.message,
                )
            diff_tree = ["diff-tree", "-r", "-M", "--no-commit-id", "--no-textconv", "-z"]
            _, names = await shadow.run(
                [*diff_tree, "--name-status", parent, commit], "git diff-tree"
            )
            _, counts = await shadow.run([*diff_tree, "--numstat", parent, commit], "git diff-tree")
        files = file_list(names.decode("utf-8", "replace"), counts.decode("utf-8", "replace"))
        self.log.info(
            "session {session_id}: committed {commit} on {branch} ({count} files)",
            session_id=session.id,
            commit=commit,
            branch=branch,
            count=len(files),
        )
        return {"commit": commit, "branch": branch, "files": files}

    def _publishes(self, session) -> bool:
        """A local session's clone: its commits go to the source repository too (a
        worktree's branch is the source's own already)."""
        return (
            self._clones is not None
            and session.checkout.source is RepoSource.LOCAL
            and session.checkout.local_clone
        )

    async def _identity(self, session) -> dict:
        """The author (and committer) git is told through its environment."""
        if self._author is not None:
            name, mail = self._author
        else:
            # The machine's identity: the server's user's own git config, never the
            # checkout's (which the agent writes).
            configured = []
            for key in ("user.name", "user.email"):
                code, out = await self._git.run(
                    str(session.directory),
                    ["config", "--global", "--get", key],
                    "git config",
                    exit_codes=(0, 1),
                )
                configured.append(out.decode().strip() if code == 0 else "")
            name, mail = configured if all(configured) else FALLBACK_AUTHOR
        return {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": mail,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": mail,
        }

    # -- push -----------------------------------------------------------------

    def push(self, session, remote_branch: str | None = None) -> defer.Deferred:
        return self._serialized(session, lambda: self._push(session, remote_branch))

    async def _push(self, session, remote_branch) -> dict:
        branch = session.checkout.branch
        if not is_github_session(session):
            return {
                "branch": branch,
                "repository": session.checkout.repo_path,
                "pushed": False,
                "message": "the branch already lives in the source repository; no push is needed",
            }
        remote_branch = await self._remote_branch(session, remote_branch)
        async with self._server_git.shadow(session) as shadow:
            return await self._push_from(shadow, session, branch, remote_branch)

    async def _push_from(self, shadow, session, branch, remote_branch) -> dict:
        commit = shadow.head
        base_commit = await self._snapshots.merge_base(session, None, shadow)
        _, out = await shadow.run(
            ["rev-list", "--count", f"{base_commit}..{commit}"], "git rev-list"
        )
        if int(out.decode().strip() or "0") == 0:
            raise InvalidState(
                f"nothing to push: {branch} has no commits beyond "
                f"{session.checkout.base_branch}; use session.commit first"
            )
        if self._token is None:
            raise InvalidState("pushing needs GITHUB_TOKEN, which this server does not have")
        repo = await self._repos.lookup(session.repo_id)
        if repo.get("source") != "github":
            raise InvalidState(f"GitHub no longer offers {session.repo_id!r} to this server")
        url = repo["cloneUrl"]
        self._progress(
            session, "push", f"pushing {branch} to {repo['fullName']} as {remote_branch}"
        )
        await shadow.run(
            [
                "push",
                "--porcelain",
                "--progress",
                "--no-verify",
                "--",
                url,
                f"{commit}:refs/heads/{remote_branch}",
            ],
            "git push",
            timeout=self._push_timeout,
            token=self._token,
            token_url=url,
            on_progress=lambda text: self._progress(session, "push", text),
        )
        self.log.info(
            "session {session_id}: pushed {commit} to {repo} {remote_branch}",
            session_id=session.id,
            commit=commit,
            repo=repo["fullName"],
            remote_branch=remote_branch,
        )
        return {
            "branch": branch,
            "remoteBranch": remote_branch,
            "commit": commit,
            "repository": repo["fullName"],
            "pushed": True,
        }

    async def _remote_branch(self, session, name: str | None) -> str:
        if name is None:
            return session.checkout.branch
        if name.startswith("-"):
            raise InvalidParams(f'"remoteBranch" {name!r} is not a branch name')
        code, _ = await self._server_git.real(
            session,
            ["check-ref-format", f"refs/heads/{name}"],
            "git check-ref-format",
            exit_codes=(0, 1),
        )
        if code != 0:
            raise InvalidParams(f'"remoteBranch" {name!r} is not a valid branch name')
        return name

    # -- pull request ---------------------------------------------------------

    def pull_request(
        self,
        session,
        title: str,
        body: str | None = None,
        draft: bool = False,
        base: str | None = None,
        remote_branch: str | None = None,
    ) -> defer.Deferred:
        return self._serialized(
            session, lambda: self._pull_request(session, title, body, draft, base, remote_branch)
        )

    async def _pull_request(self, session, title, body, draft, base, remote_branch) -> dict:
        if not is_github_session(session):
            raise InvalidState(
                "pull requests are for GitHub sessions; this session's branch "
                f"{session.checkout.branch} lives in the source repository"
            )
        if self._github is None:
            raise InvalidState("pull requests need GITHUB_TOKEN, which this server does not have")
        # Pushing what is already there costs one round trip and makes sure it is.
        pushed = await self._push(session, remote_branch)
        base = base if base is not None else session.checkout.base_branch
        self._progress(
            session,
            "pull_request",
            f"opening a pull request on {pushed['repository']}: "
            f"{pushed['remoteBranch']} into {base}",
        )
        pull = await self._github.create_pull_request(
            pushed["repository"], title, pushed["remoteBranch"], base, body, draft
        )
        return {**pull, "head": pushed["remoteBranch"], "base": base, "commit": pushed["commit"]}
