"""
The repositories a code session can work on: local ones listed in
``<data-dir>/repos.json`` and, with a token, the user's GitHub repositories.

``repos.json`` is ``{"repos": [{"id", "name", "path", "defaultBranch"?}]}``.  A
bad entry (or a bad file) is skipped and reported as a warning, never fatal.
Repo ids are only ever compared, never used to build a path.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.logger import Logger

from piserver.common.errors import GitError, GithubError, NotFound

REPOS_FILE = "repos.json"


class RepoCatalog:
    """
    ``github`` is a :class:`piserver.repos.github.GithubClient` or None (no token);
    ``git`` a :class:`piserver.repos.git.Git`, used to check local repositories.
    """

    def __init__(self, data_dir: str, github, git, log: Logger | None = None):
        self._path = os.path.join(data_dir, REPOS_FILE)
        self._data_dir = data_dir
        self._github = github
        self._git = git
        self._log = log if log is not None else Logger()

    def list(self) -> defer.Deferred:
        """
        Deferred ``{"repos": [...], "warnings": [...]}``: local repos first (in
        file order, with ``path``), then GitHub's.  Fails with GithubError only
        when GitHub fails and there is no usable local repo.
        """
        return defer.Deferred.fromCoroutine(self._list())

    def lookup(self, repo_id: str) -> defer.Deferred:
        """Deferred repo dict for ``repo_id``; NotFound if no source lists it."""
        return defer.Deferred.fromCoroutine(self._lookup(repo_id))

    async def _list(self) -> dict:
        local, warnings, github_error, remote = await self._collect()
        if github_error is not None:
            if not local:
                raise github_error
            warnings.append(github_error.message)
        return {"repos": local + remote, "warnings": warnings}

    async def _lookup(self, repo_id: str) -> dict:
        local, _warnings, github_error, remote = await self._collect()
        for repo in local + remote:
            if repo["id"] == repo_id:
                return repo
        if github_error is not None:
            # It may well be one of the GitHub repos we could not list.
            raise github_error
        raise NotFound(f"no repo with id {repo_id!r}")

    async def _collect(self):
        warnings: list[str] = []
        entries = self._read_entries(warnings)
        checks = [defer.Deferred.fromCoroutine(self._check_local(e)) for e in entries]
        remote_listing = self._github.list_repos() if self._github is not None else None
        checked = await defer.gatherResults(checks, consumeErrors=True)
        local: list[dict] = []
        seen: set[str] = set()
        for repo, problem in checked:
            if problem is None and repo["id"] in seen:
                problem = f"repos.json: id {repo['id']!r} appears more than once; skipped"
            if problem is not None:
                warnings.append(problem)
                continue
            seen.add(repo["id"])
            local.append(repo)
        remote: list[dict] = []
        github_error = None
        if remote_listing is not None:
            try:
                github_repos = await remote_listing
            except GithubError as e:
                github_error = e
            else:
                for repo in github_repos:
                    if repo["id"] in seen:
                        warnings.append(
                            f"GitHub repo {repo['id']!r} is hidden by the local repo with "
                            "the same id"
                        )
                        continue
                    repo["source"] = "github"
                    remote.append(repo)
        for warning in warnings:
            self._log.warn("repos: {warning}", warning=warning)
        return local, warnings, github_error, remote

    def _read_entries(self, warnings: list[str]) -> list[tuple[int, object]]:
        try:
            with open(self._path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            warnings.append(f"repos.json could not be read ({_reason(e)}); no local repos")
            return []
        try:
            document = json.loads(text)
        except ValueError as e:
            warnings.append(f"repos.json is not valid JSON ({e}); no local repos")
            return []
        repos = document.get("repos") if isinstance(document, dict) else None
        if not isinstance(repos, list):
            warnings.append('repos.json must be an object with a "repos" list; no local repos')
            return []
        return list(enumerate(repos))

    async def _check_local(self, numbered_entry) -> tuple[dict | None, str | None]:
        """The entry as a repo dict, or the reason it is skipped."""
        index, entry = numbered_entry
        where = f"repos.json entry {index}"
        if not isinstance(entry, dict):
            return None, f"{where} is not an object; skipped"
        problems = [
            f'"{key}" must be a non-empty string'
            for key in ("id", "name", "path")
            if not isinstance(entry.get(key), str) or not entry[key].strip()
        ]
        branch = entry.get("defaultBranch")
        if branch is not None and (not isinstance(branch, str) or not branch.strip()):
            problems.append('"defaultBranch" must be a non-empty string when given')
        if problems:
            return None, f"{where}: {'; '.join(problems)}; skipped"
        repo_id = entry["id"]
        where = f"repos.json repo {repo_id!r}"
        # Relative paths are relative to the data directory, not to our cwd.
        path = os.path.normpath(os.path.join(self._data_dir, os.path.expanduser(entry["path"])))
        if not os.path.isdir(path):
            return None, f"{where}: path {path} does not exist or is not a directory; skipped"
        try:
            if not await self._git.is_repository_root(path):
                return None, f"{where}: {path} is not the top of a git repository; skipped"
            if branch is None:
                branch = await self._git.current_branch(path)
                if branch is None:
                    return None, (
                        f"{where}: HEAD is detached, so the default branch is unknown; "
                        'set "defaultBranch"; skipped'
                    )
            if not await self._git.branch_exists(path, branch):
                return None, f"{where}: branch {branch!r} does not exist; skipped"
        except GitError as e:
            return None, f"{where}: {e.message}; skipped"
        return {
            "id": repo_id,
            "name": entry["name"],
            "path": path,
            "defaultBranch": branch,
            "source": "local",
        }, None


def _reason(exception: Exception) -> str:
    return getattr(exception, "strerror", None) or str(exception)
