"""
A local code session's checkout: a clone of the user's repository that shares
nothing writable with it, and the one way its branch reaches that repository.

The clone is made with ``git clone --shared``: its object store lists the source
repository's as an alternate, so it costs no copy, and the sandbox shows that
object store read-only (``launchers.bwrap``).  Everything the session writes
(objects, refs, reflogs, index) is the clone's own, inside the session's directory:
nothing the agent does reaches the user's history.

The session's branch ``pi/session-<id>`` exists in both.  It is made in the source
repository at create (so the user sees it, and the base commit the clone depends
on stays reachable there) and moved there only by the server, with plumbing run in
the source repository: the new objects are copied with ``pack-objects`` (reading the
clone's objects through a :class:`piserver.repos.servergit.Shadow`, writing a pack
into the source's store) and the ref set with ``update-ref``.  Nothing of the
clone's config, hooks or ``upload-pack`` runs: no ``fetch`` or ``push`` between the
two.  This happens after ``session.commit`` and, for commits the agent made itself,
when the session is deleted.
"""

from __future__ import annotations

import os
import shutil

from twisted.logger import Logger

from piserver.common.errors import GitError
from piserver.repos.servergit import ENVIRONMENT, OVERRIDES

# What a published branch's reflog says.
PUBLISH_MESSAGE = "pi-server: session commit"


class LocalClones:
    """``git`` a :class:`piserver.repos.git.Git`; ``server_git`` the
    :class:`piserver.repos.servergit.ServerGit` whose shadows read a clone's objects."""

    log = Logger()

    def __init__(self, git, server_git) -> None:
        self._git = git
        self._server_git = server_git

    def _source(self, source: str, args, what: str, **kwargs):
        """git in the user's repository, with none of the machine's config and the
        server's overrides (it runs nothing of any repository's)."""
        return self._git.run(source, [*OVERRIDES, *args], what, extra_env=ENVIRONMENT, **kwargs)

    async def _commit_of(self, source: str, name: str) -> str | None:
        code, out = await self._source(
            source,
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"],
            "git rev-parse",
            exit_codes=(0, 1),
        )
        return out.decode().strip() if code == 0 else None

    async def source_objects(self, source: str) -> str:
        """The source repository's object store (its alternate in every clone)."""
        _, out = await self._source(
            source, ["rev-parse", "--path-format=absolute", "--git-common-dir"], "git rev-parse"
        )
        return os.path.join(out.decode().strip(), "objects")

    # -- create ---------------------------------------------------------------

    async def create(self, source: str, dest: str, branch: str, base: str) -> None:
        """``branch`` made at ``base`` in ``source``, and ``dest`` a clone of ``source``
        checked out on it, with ``base`` as a branch of its own too.  On failure
        nothing is left: no directory, no branch."""
        for name in (branch, base):
            if not name or name.startswith("-"):
                raise GitError(f"invalid branch name {name!r}")
        if os.path.lexists(dest):
            raise GitError(f"cannot create a checkout at {dest}: it already exists")
        start = await self._commit_of(source, f"refs/heads/{base}")
        if start is None:
            raise GitError(f"{source} has no branch {base}")
        # An empty old value: the branch must not exist yet.
        await self._source(
            source,
            ["update-ref", "-m", "pi-server: session", f"refs/heads/{branch}", start, ""],
            "git update-ref",
        )
        try:
            await self._git.run(
                os.path.dirname(dest),
                ["clone", "--quiet", "--shared", f"--branch={branch}", "--", source, dest],
                "git clone",
            )
            await self._git.run(dest, ["update-ref", f"refs/heads/{base}", start], "git update-ref")
        except BaseException:
            await self._undo_create(source, dest, branch, start)
            raise

    async def _undo_create(self, source: str, dest: str, branch: str, start: str) -> None:
        shutil.rmtree(dest, ignore_errors=True)
        try:
            await self._source(
                source, ["update-ref", "-d", f"refs/heads/{branch}", start], "git update-ref"
            )
        except GitError as e:
            self.log.warn("git: cleaning up after a failed clone: {error}", error=e.message)

    # -- publish --------------------------------------------------------------

    async def publish(self, session, commit: str) -> None:
        """Make ``commit`` (an object of the session's clone) the tip of the session's
        branch in the source repository, copying the objects it lacks."""
        checkout = session.checkout
        source = checkout.repo_path
        ref = f"refs/heads/{checkout.branch}"
        old = await self._commit_of(source, ref)
        if old == commit:
            return
        known = [c for c in (old, await self._commit_of(source, checkout.base_branch)) if c]
        objects = await self.source_objects(source)
        revisions = "".join([f"{commit}\n", *(f"^{c}\n" for c in known)]).encode()
        async with self._server_git.shadow(session, head=commit) as shadow:
            # Read from the clone (and the source, its alternate), written as one
            # pack straight into the source's store; the shadow's own git dir has
            # no config of anyone's.
            _, out = await shadow.run(
                ["pack-objects", "--revs", "--quiet", os.path.join(objects, "pack", "pack")],
                "git pack-objects",
                extra_env={
                    "GIT_OBJECT_DIRECTORY": objects,
                    "GIT_ALTERNATE_OBJECT_DIRECTORIES": shadow.objects,
                },
                stdin=revisions,
            )
            await self._check_pack(source, objects, out.decode().strip(), shadow.directory)
        # Only moves the ref that was there when this began (else a GitError).
        await self._source(
            source,
            ["update-ref", "-m", PUBLISH_MESSAGE, ref, commit, old or ""],
            "git update-ref",
        )
        self.log.info(
            "session {session_id}: {branch} in {source} is now {commit}",
            session_id=session.id,
            branch=checkout.branch,
            source=source,
            commit=commit,
        )

    async def _check_pack(self, source: str, objects: str, name: str, scratch: str) -> None:
        """The agent made those objects: a pack holding one git's fsck finds broken
        (bad trees, paths such as ``.git``) is removed again before any ref names it."""
        pack = os.path.join(objects, "pack", f"pack-{name}")
        try:
            await self._source(
                source,
                [
                    "index-pack",
                    "--strict",
                    "-o",
                    os.path.join(scratch, "check.idx"),
                    f"{pack}.pack",
                ],
                "git index-pack",
            )
        except GitError as e:
            for suffix in (".pack", ".idx", ".rev"):
                try:
                    os.unlink(pack + suffix)
                except FileNotFoundError:
                    pass
            raise GitError(f"the session's commits hold objects git refuses: {e.message}") from None

    async def publish_own_commits(self, session) -> None:
        """Publish the clone's branch if the agent committed on it beyond what the
        source has (before the clone goes)."""
        checkout = session.checkout
        tip = await self._server_git.resolve(session, f"refs/heads/{checkout.branch}")
        if tip is None:
            return
        old = await self._commit_of(checkout.repo_path, f"refs/heads/{checkout.branch}")
        if tip != old:
            await self.publish(session, tip)
