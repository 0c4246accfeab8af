"""
git the server runs on a session's checkout, with nothing of the agent's able to
execute or redirect it.

The agent writes its checkout's ``.git`` (config, hooks, ``info/``, ``HEAD``) and
its ``.gitattributes``.  Read as hostile, that config could name filter
drivers, an fsmonitor, hooks, proxies, ``insteadOf`` rewrites or signing
programs, all of which git would run as the server.  So the server never runs a
git that reads it:

- names are resolved to commit ids in the real repository with ``rev-parse`` and
  refs are moved with ``update-ref``, both under :data:`OVERRIDES` (nothing of
  those two runs a program the config could name);
- everything else (staging the working tree, diffs, ``commit-tree``, push) runs in
  a git directory the server writes itself for that one operation (:class:`Shadow`):
  its own config, no hooks, ``HEAD`` at a commit the server chose, the checkout as
  work tree and the repository's object store through ``GIT_OBJECT_DIRECTORY``.
  An in-tree ``.gitattributes`` can still name a filter or diff driver, but no
  driver is configured there, so git applies none.

Staging (``git add``) is the one step that reads the working tree, which the agent
can change under it: it lstat()s a directory and opens files below it later, so an
agent swapping a directory with a symlink in a loop could make it read any file the
server can.  So it runs inside the session's sandbox (the launcher's ``one_shot``:
the agent's files and nothing else of the server's, no network, no secret), where a
followed link reaches only what the agent could read anyway; with ``--sandbox none``
or a ``--launcher-command`` it runs as the server, as everything else does.

git 2.39 (this machine's) has no ``--attr-source``; the separate git directory is
what makes filters harmless without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import asynccontextmanager

from piserver.common import safefs
from piserver.common.errors import GitError, InvalidParams

# Given to every server-run git on a checkout: ``-c`` wins over any config file.
# They matter most for the few commands run in the real repository, and for a
# nested repository (a gitlink) whose own config git reads while staging it.
OVERRIDES = (
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.untrackedCache=false",
    "-c",
    "core.splitIndex=false",
    "-c",
    "core.quotepath=false",
    "-c",
    "submodule.recurse=false",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "http.proxy=",
    "-c",
    "protocol.allow=never",
    "-c",
    "protocol.https.allow=always",
    "-c",
    "protocol.http.allow=always",
)

# No system or user config either: the server's git behaves the same everywhere.
ENVIRONMENT = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}

DIFF_OPTIONS = ("--no-ext-diff", "--no-textconv", "--no-color")

_SHADOW_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n"
# The agent's index is only a cache of file hashes; a larger one is not copied.
_MAX_INDEX_BYTES = 256 * 1024 * 1024


def _copy_index(source: str, dest: str) -> bool:
    """Copy the agent's index if it is a regular file of sane size (no link, FIFO or
    device followed or read); False when it is not, or is missing."""
    directory, name = os.path.split(source)
    try:
        with safefs.root(directory) as directory_fd:
            opened = safefs.open_regular(directory_fd, name)
            with safefs.reader(opened) as src, open(dest, "wb") as out:
                safefs.copy_limited(src, out, _MAX_INDEX_BYTES, name)
    except (OSError, safefs.Refused):
        return False
    return True


def _make_shadow(parent: str, head: str) -> str:
    directory = tempfile.mkdtemp(prefix="git-", dir=parent)
    os.mkdir(f"{directory}/refs")
    os.mkdir(f"{directory}/objects")
    with open(f"{directory}/HEAD", "w") as f:
        f.write(f"{head}\n")
    with open(f"{directory}/config", "w") as f:
        f.write(_SHADOW_CONFIG)
    return directory


def own_objects(session, objects: str) -> tuple[str, bool]:
    """``(store, shown)``: the session's own object store, where the checkout's ``.git``
    says it is (``objects``), and whether a sandbox staging the checkout must be shown
    it (it is outside the checkout).  A clone's store is inside its checkout: the
    staging sandbox sees it through the checkout's own mount, so a store the agent
    swaps for a link leads only to what the agent itself sees; it is never mounted from
    a path the agent names.  A worktree of old uses its source repository's store, named
    by the server.  Else a GitError: the agent pointed its ``.git`` (or the store, by a
    link) at another repository, whose objects the server's git would then write."""
    found = os.path.realpath(objects)
    if found.startswith(os.path.realpath(session.cwd) + os.sep):
        _check_alternates(session, objects)
        return objects, False
    source = session.checkout.repo_path if session.checkout is not None else None
    if source and _is_own_worktree(session):
        store = os.path.realpath(os.path.join(source, ".git", "objects"))
        if found == store:
            return store, True
    raise GitError("the checkout's .git does not lead to an object store of its own")


def _check_alternates(session, objects: str) -> None:
    """A store inside the checkout may borrow only from its source repository's store
    (a local clone's alternate), else from none: the server's git must not read objects
    from wherever the agent names (another repository, another session's clone) and
    copy them on into the source repository it can read."""
    unreadable = GitError("the checkout's object store has unreadable alternates")
    try:
        text = safefs.read_small(os.path.join(objects, "info", "alternates"), 64 * 1024)
    except FileNotFoundError:
        return
    except safefs.Refused as refused:
        if refused.reason is safefs.Reason.MISSING:
            return
        raise unreadable from None
    except (OSError, ValueError):
        raise unreadable from None
    source = session.checkout.repo_path if session.checkout is not None else None
    allowed = set()
    if source:
        allowed = {
            os.path.realpath(os.path.join(source, ".git", "objects")),
            os.path.realpath(os.path.join(source, "objects")),
        }
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if os.path.realpath(os.path.join(objects, line)) not in allowed:
            raise GitError("the checkout's object store borrows from a store not its own")


def _is_own_worktree(session) -> bool:
    """Whether the checkout is a worktree of old of its source repository: its ``.git``
    a file naming ``<source>/.git/worktrees/<name>``, whose ``gitdir`` names it back (a
    clone's agent cannot write there).  The files are read as the agent's (no link
    followed, no FIFO, a few KiB)."""
    checkout, dot_git = session.checkout, os.path.join(session.cwd, ".git")
    if checkout is None or not checkout.repo_path:
        return False
    try:
        first = safefs.read_small(dot_git).partition("\n")[0].strip()
        if not first.startswith("gitdir:"):
            return False
        gitdir = os.path.join(str(session.cwd), first.removeprefix("gitdir:").strip())
        back = safefs.read_small(os.path.join(gitdir, "gitdir")).strip()
    except (OSError, ValueError, safefs.Refused):
        return False
    worktrees = os.path.realpath(os.path.join(checkout.repo_path, ".git", "worktrees"))
    return os.path.dirname(os.path.realpath(gitdir)) == worktrees and os.path.realpath(
        back
    ) == os.path.realpath(dot_git)


class Shadow:
    """One operation's git directory (see the module's doc); ``head`` its HEAD commit."""

    def __init__(
        self,
        server_git: ServerGit,
        session,
        directory: str,
        objects: str,
        head: str,
        show_objects: bool = False,
    ):
        self._server_git = server_git
        self._session = session
        self.directory = directory
        self.objects = objects
        # Whether the staging sandbox must be shown the store (see own_objects).
        self._show_objects = show_objects
        self.head = head
        self.index = f"{directory}/index"

    def run(self, args, what, index: str | None = None, extra_env=None, confined=False, **kwargs):
        """git ``args`` here, on ``index`` (default: this directory's own); ``confined``:
        inside the session's sandbox, which may write only this directory and the
        object store (see the module's doc)."""
        if confined:
            writable = (self.directory, self.objects) if self._show_objects else (self.directory,)
            kwargs["confine"] = self._server_git.confine(self._session, writable)
        env = {
            **ENVIRONMENT,
            "GIT_OBJECT_DIRECTORY": self.objects,
            "GIT_INDEX_FILE": index or self.index,
            **(extra_env or {}),
        }
        return self._server_git.git.run(
            str(self._session.cwd),
            [
                *OVERRIDES,
                f"--git-dir={self.directory}",
                f"--work-tree={self._session.cwd}",
                *args,
            ],
            what,
            extra_env=env,
            **kwargs,
        )

    async def seed_index(self, agent_index: str | None) -> None:
        """Start this index from a copy of the agent's (so unchanged files are not
        hashed again), else from HEAD's tree."""
        if agent_index is None or not await self._server_git.in_thread(
            _copy_index, agent_index, self.index
        ):
            await self.run(["read-tree", self.head], "git read-tree")

    async def add(self, pathspec=()) -> None:
        """``git add --all`` of the working files (under ``pathspec``) into this index,
        inside the session's sandbox: the one step that reads the working tree."""
        await self.run(["--literal-pathspecs", "add", "--all", *pathspec], "git add", confined=True)

    async def stage_all(self, agent_index: str | None, pathspec=()) -> str:
        """The id of a tree of the working files as they are now (``--all``)."""
        await self.seed_index(agent_index)
        await self.add(pathspec)
        _, out = await self.run(["write-tree"], "git write-tree")
        return out.decode().strip()


class ServerGit:
    """``git`` a :class:`piserver.repos.git.Git`; ``in_thread(f, *args)`` runs file work;
    ``confinement(session, writable)`` the session's sandbox for one git (a
    ``common.processes.Confine``, or None to run it as the server; see the module's
    doc), None on a server whose agents are not sandboxed."""

    def __init__(self, git, in_thread, confinement=None):
        self.git = git
        self.in_thread = in_thread
        self._confinement = confinement

    def confine(self, session, writable):
        if self._confinement is None:
            return None
        return self._confinement(session, tuple(writable))

    def real(self, session, args, what, **kwargs):
        """git ``args`` in the checkout's real repository (resolving and moving refs only)."""
        env = {**ENVIRONMENT, **(kwargs.pop("extra_env", None) or {})}
        return self.git.run(str(session.cwd), [*OVERRIDES, *args], what, extra_env=env, **kwargs)

    async def resolve(self, session, name: str) -> str | None:
        """The commit ``name`` names in the real repository, or None."""
        if not isinstance(name, str) or not name or name.startswith("-"):
            raise InvalidParams(f"{name!r} is not a branch or commit name")
        code, out = await self.real(
            session,
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"],
            "git rev-parse",
            exit_codes=(0, 1),
        )
        return out.decode().strip() if code == 0 else None

    def head_ref(self, session) -> str:
        """The session's own branch by name: never through a HEAD the agent may rewrite."""
        if session.checkout is not None:
            return f"refs/heads/{session.checkout.branch}"
        return "HEAD"

    async def head(self, session) -> str:
        ref = self.head_ref(session)
        commit = await self.resolve(session, ref)
        if commit is None:
            raise GitError(f"the checkout has no {ref}")
        return commit

    async def git_path(self, session, what: str) -> str:
        _, out = await self.real(
            session,
            ["rev-parse", "--path-format=absolute", f"--git-{what}"],
            "git rev-parse",
        )
        return out.decode().strip()

    async def agent_index(self, session) -> str:
        _, out = await self.real(
            session,
            ["rev-parse", "--path-format=absolute", "--git-path", "index"],
            "git rev-parse",
        )
        return out.decode().strip()

    @asynccontextmanager
    async def shadow(self, session, head: str | None = None):
        """A :class:`Shadow` for one operation, removed afterwards; HEAD at ``head``
        (default: the tip of the session's branch)."""
        if head is None:
            head = await self.head(session)
        objects, show_objects = own_objects(
            session, os.path.join(await self.git_path(session, "common-dir"), "objects")
        )
        directory = await self.in_thread(_make_shadow, str(session.directory), head)
        try:
            yield Shadow(self, session, directory, objects, head, show_objects)
        finally:
            await self.in_thread(shutil.rmtree, directory, True)
