"""
A code session's own checkout of its repository, on branch ``pi/session-<id>``:
a clone of a local repository that shares nothing writable with it
(:mod:`piserver.repos.localclone`), or a clone of a GitHub repository.  Sessions
made before local clones have a git worktree of the local repository instead; they
are still removed as such.
"""

import enum

import attr
from twisted.logger import Logger

from piserver.common.errors import GitError


class RepoSource(enum.StrEnum):
    """Where a code session's repository comes from."""

    LOCAL = "local"  # a clone of a repository listed in repos.json
    GITHUB = "github"  # a clone of a GitHub repository


@attr.frozen
class CheckoutRecord:
    """What a code session's record keeps of its checkout: to ship its work (branch, base)
    and to remove it (a local repository's branch, and a worktree of old)."""

    source: RepoSource
    branch: str
    base_branch: str
    # The local repository the checkout was cloned from; None for a GitHub clone.
    repo_path: str | None = None
    # A local repository's checkout: a clone of it (False: a git worktree of it, as made
    # before clones). Kept here: the agent owns the checkout's .git, and could make it say
    # either.
    local_clone: bool = False

    def to_json(self) -> dict:
        """The record's fields, as ``session.json`` and ``state.json`` have always had them
        (``localClone`` since local checkouts are clones)."""
        fields = {"repoSource": self.source.value}
        if self.repo_path is not None:
            fields["repoPath"] = self.repo_path
        if self.local_clone:
            fields["localClone"] = True
        return fields | {"branch": self.branch, "baseBranch": self.base_branch}

    @classmethod
    def from_json(cls, record: dict) -> "CheckoutRecord | None":
        """The checkout a session record describes; None for a record of none (a chat
        session, or a clone whose create was interrupted before it was planned)."""
        try:
            source = RepoSource(record.get("repoSource"))
        except ValueError:
            return None
        fields = [record.get(key) for key in ("branch", "baseBranch")]
        repo_path = record.get("repoPath")
        if not all(isinstance(value, str) for value in fields) or not (
            repo_path is None or isinstance(repo_path, str)
        ):
            raise ValueError("the checkout's branch, base or repository is not a string")
        return cls(
            source, *fields, repo_path=repo_path, local_clone=record.get("localClone") is True
        )


@attr.frozen
class Checkout:
    path: object
    # Kept in the session's record, to ship its work and remove the checkout later.
    record: CheckoutRecord


def session_branch(session_id: str) -> str:
    return f"pi/session-{session_id}"


class Checkouts:
    log = Logger()

    def __init__(self, git, clones, github_token: str | None = None):
        self._git = git
        # localclone.LocalClones: a local repository's checkouts.
        self._clones = clones
        self._github_token = github_token

    def planned(self, session, repo: dict) -> dict:
        """What ``create`` will make outside the session's directory, as ``remove`` reads
        it from ``session.checkout`` (and the checkout's path), to undo an interrupted
        create: the fields to add to the session's record."""
        record = {"worktreePath": str(session.directory / "repo")}
        if repo.get("source") == RepoSource.LOCAL:
            checkout = CheckoutRecord(
                RepoSource.LOCAL,
                session_branch(session.id),
                repo["defaultBranch"],
                repo_path=repo["path"],
                local_clone=True,
            )
            record.update(checkout.to_json())
        return record

    async def create(self, session, repo: dict, on_progress) -> Checkout:
        dest = session.directory / "repo"
        branch = session_branch(session.id)
        base = repo["defaultBranch"]
        if repo.get("source") == "local":
            on_progress("clone", f"cloning {repo['name']} on {branch}")
            await self._clones.create(repo["path"], str(dest), branch, base)
            record = CheckoutRecord(
                RepoSource.LOCAL, branch, base, repo_path=repo["path"], local_clone=True
            )
        else:
            on_progress("clone", f"cloning {repo['fullName']} ({base})")
            await self._git.clone(
                repo["cloneUrl"],
                str(dest),
                base,
                token=self._github_token,
                on_progress=lambda text: on_progress("clone", text),
            )
            await self._git.checkout_new_branch(str(dest), branch)
            record = CheckoutRecord(RepoSource.GITHUB, branch, base)
        self.log.info(
            "session {session_id}: checkout ready at {path} on {branch}",
            session_id=session.id,
            path=str(dest),
            branch=branch,
        )
        return Checkout(path=dest, record=record)

    async def remove(self, session) -> dict:
        """Undo a local repo's checkout: the commits the agent made on its branch are
        published to the source repository first, and the branch there is kept if it
        holds new commits.  (The clone itself is a directory, removed with the
        session's.)"""
        checkout = session.checkout
        if checkout is None or checkout.source is not RepoSource.LOCAL:
            return {}  # a clone is just a directory, removed with the session's
        repo_path, branch = checkout.repo_path, checkout.branch
        try:
            if not checkout.local_clone:
                await self._git.worktree_remove(repo_path, str(session.cwd))
            elif session.cwd.is_dir():
                await self._publish_own_commits(session)
            if await self._git.branch_has_unmerged_commits(repo_path, branch, checkout.base_branch):
                self.log.info(
                    "session {session_id}: keeping branch {branch} (it has commits)",
                    session_id=session.id,
                    branch=branch,
                )
                return {"branchKept": True, "branch": branch}
            await self._git.delete_branch(repo_path, branch)
        except GitError as e:
            # The source repository may have moved or gone; the session still goes.
            self.log.warn(
                "session {session_id}: could not clean up {repo}: {error}",
                session_id=session.id,
                repo=repo_path,
                error=e.message,
            )
            return {"branchKept": True, "branch": branch, "warning": e.message}
        return {"branchKept": False, "branch": branch}

    async def _publish_own_commits(self, session) -> None:
        try:
            await self._clones.publish_own_commits(session)
        except GitError as e:
            # The agent's clone may be broken beyond reading: the branch stays as the
            # server last published it.
            self.log.warn(
                "session {session_id}: could not publish the agent's commits: {error}",
                session_id=session.id,
                error=e.message,
            )
