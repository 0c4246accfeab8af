"""
A code session's own checkout of its repository, on branch ``pi/session-<id>``:
a git worktree of a local repository, or a clone of a GitHub repository.
"""

import attr
from twisted.logger import Logger

from piserver.common.errors import GitError


@attr.frozen
class Checkout:
    path: object
    # Kept in the session's state entry, to remove the checkout later.
    record: dict


def session_branch(session_id: str) -> str:
    return f"pi/session-{session_id}"


class Checkouts:
    log = Logger()

    def __init__(self, git, github_token: str | None = None):
        self._git = git
        self._github_token = github_token

    def planned(self, session, repo: dict) -> dict:
        """What ``create`` will make outside the session's directory, as ``remove`` reads
        it from ``session.extra`` (and the checkout's path), to undo an interrupted create."""
        record = {"worktreePath": str(session.directory / "repo")}
        if repo.get("source") == "local":
            record.update(
                repoSource="local",
                repoPath=repo["path"],
                branch=session_branch(session.id),
                baseBranch=repo["defaultBranch"],
            )
        return record

    async def create(self, session, repo: dict, on_progress) -> Checkout:
        dest = session.directory / "repo"
        branch = session_branch(session.id)
        base = repo["defaultBranch"]
        if repo.get("source") == "local":
            on_progress("worktree", f"creating a worktree of {repo['name']} on {branch}")
            await self._git.worktree_add(repo["path"], str(dest), branch, base)
            record = {"repoSource": "local", "repoPath": repo["path"]}
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
            record = {"repoSource": "github"}
        record.update(branch=branch, baseBranch=base)
        self.log.info(
            "session {session_id}: checkout ready at {path} on {branch}",
            session_id=session.id,
            path=str(dest),
            branch=branch,
        )
        return Checkout(path=dest, record=record)

    async def remove(self, session) -> dict:
        """Remove a local repo's worktree; its branch is kept if it holds new commits."""
        extra = session.extra
        if extra.get("repoSource") != "local":
            return {}  # a clone is just a directory, removed with the session's
        repo_path, branch = extra["repoPath"], extra["branch"]
        try:
            await self._git.worktree_remove(repo_path, str(session.cwd))
            if await self._git.branch_has_unmerged_commits(repo_path, branch, extra["baseBranch"]):
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
