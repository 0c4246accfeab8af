"""
A local code session's clone (repos.localclone) with real git: what create makes in
the source repository and the clone, that a failed create leaves nothing, and that
publishing carries exactly the new objects into the source and moves only the
session's branch.
"""

import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from piserver.common.errors import GitError
from piserver.repos.git import Git
from piserver.repos.localclone import LocalClones
from piserver.repos.servergit import ServerGit
from piserver.repos.snapshot import Snapshots
from tests.support.fakegithub import git_env, make_repository, run_git
from tests.support.hostilegit import in_thread, local_session

BRANCH = "pi/session-s1"


def objects(repo) -> set[str]:
    listing = run_git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)", cwd=repo)
    return set(listing.split())


@pytest.fixture
def setup(tmp_path):
    source = make_repository(str(tmp_path / "source"), default_branch="main")
    git = Git(reactor, env=git_env())
    session = local_session(tmp_path, source, BRANCH)
    return source, session, LocalClones(git, ServerGit(git, in_thread))


@pytest_twisted.ensureDeferred
async def test_a_clone_borrows_the_source_s_objects_and_its_branch_moves_by_publishing(setup):
    source, session, clones = setup
    main = run_git("rev-parse", "main", cwd=source).strip()
    before = objects(source)
    await clones.create(source, str(session.cwd), BRANCH, "main")

    clone = str(session.cwd)
    assert run_git("rev-parse", BRANCH, cwd=source).strip() == main
    assert run_git("branch", "--show-current", cwd=clone).strip() == BRANCH
    assert run_git("rev-parse", "main", cwd=clone).strip() == main
    alternates = session.cwd / ".git" / "objects" / "info" / "alternates"
    assert alternates.read_text().strip() == os.path.join(source, ".git", "objects")
    # Borrowed, not copied.
    assert not os.listdir(session.cwd / ".git" / "objects" / "pack")

    # The agent commits in its clone: nothing reaches the source...
    (session.cwd / "new.txt").write_text("new\n")
    run_git("add", "new.txt", cwd=clone)
    run_git("commit", "-qm", "agent", cwd=clone)
    tip = run_git("rev-parse", "HEAD", cwd=clone).strip()
    assert objects(source) == before
    # ...until the server publishes it: the commit, its tree and blob, and the branch.
    await clones.publish_own_commits(session)
    assert run_git("rev-parse", BRANCH, cwd=source).strip() == tip
    assert len(objects(source) - before) == 3
    run_git("fsck", "--strict", cwd=source)
    assert run_git("rev-parse", "main", cwd=source).strip() == main
    # Publishing what is there already changes nothing.
    packs = sorted(os.listdir(os.path.join(source, ".git", "objects", "pack")))
    await clones.publish(session, tip)
    assert sorted(os.listdir(os.path.join(source, ".git", "objects", "pack"))) == packs


@pytest_twisted.ensureDeferred
async def test_a_failed_create_leaves_no_branch_and_no_directory(setup):
    source, session, clones = setup
    with pytest.raises(GitError, match="no branch"):
        await clones.create(source, str(session.cwd), BRANCH, "nonexistent")
    # The clone fails (its destination's parent is a file): the branch made goes again.
    blocker = session.directory / "file"
    blocker.write_text("")
    with pytest.raises(GitError):
        await clones.create(source, str(blocker / "repo"), BRANCH, "main")
    assert run_git("branch", "--list", BRANCH, cwd=source) == ""
    assert not (blocker / "repo").exists() and not session.cwd.exists()
    # An existing branch is never taken over.
    run_git("branch", BRANCH, "main", cwd=source)
    with pytest.raises(GitError):
        await clones.create(source, str(session.cwd), BRANCH, "main")
    assert not session.cwd.exists()


@pytest_twisted.ensureDeferred
async def test_objects_git_refuses_are_not_published(setup):
    source, session, clones = setup
    await clones.create(source, str(session.cwd), BRANCH, "main")
    clone = str(session.cwd)
    before = run_git("rev-parse", BRANCH, cwd=source).strip()
    packs = sorted(os.listdir(os.path.join(source, ".git", "objects", "pack")))
    # A tree with an entry ".git": checking it out would write into a repository's git dir.
    blob = run_git("hash-object", "-w", "--stdin", cwd=clone, input="[core]\n").strip()
    tree = run_git("mktree", cwd=clone, input=f"100644 blob {blob}\t.git\n").strip()
    commit = run_git("commit-tree", tree, "-p", before, "-m", "evil", cwd=clone).strip()
    run_git("update-ref", f"refs/heads/{BRANCH}", commit, cwd=clone)

    with pytest.raises(GitError, match="refuses.*hasDotgit"):
        await clones.publish_own_commits(session)
    assert run_git("rev-parse", BRANCH, cwd=source).strip() == before
    assert sorted(os.listdir(os.path.join(source, ".git", "objects", "pack"))) == packs
    run_git("fsck", "--strict", cwd=source)


@pytest_twisted.ensureDeferred
async def test_the_server_writes_no_object_where_the_agent_points_its_git(setup):
    source, session, clones = setup
    await clones.create(source, str(session.cwd), BRANCH, "main")
    snapshots = Snapshots(Git(reactor, env=git_env()), in_thread, lambda *_: None)
    (session.cwd / "new.txt").write_text("new\n")
    assert (await snapshots.diff(session))["files"][0]["path"] == "new.txt"
    before = objects(source)
    # The clone's object store a link to the source's...
    store = session.cwd / ".git" / "objects"
    os.rename(store, session.cwd / ".git" / "objects.own")
    os.symlink(os.path.join(source, ".git", "objects"), store)
    with pytest.raises(GitError, match="object store of its own"):
        await snapshots.diff(session)
    # ...or its .git a file leading to the source's git dir.
    os.rename(session.cwd / ".git", session.cwd / "git.own")
    (session.cwd / ".git").write_text(f"gitdir: {source}/.git\n")
    with pytest.raises(GitError, match="object store of its own"):
        await snapshots.diff(session)
    assert objects(source) == before
