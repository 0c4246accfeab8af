"""Which object store the server's git writes, and what the staging sandbox is shown."""

import os
from types import SimpleNamespace

import pytest

from piserver.common.errors import GitError
from piserver.repos.servergit import own_objects


def session_at(tmp_path, repo_path=None):
    checkout = tmp_path / "sessions" / "s1" / "repo"
    (checkout / ".git" / "objects").mkdir(parents=True)
    return SimpleNamespace(cwd=checkout, checkout=SimpleNamespace(repo_path=repo_path))


def test_a_clones_store_is_used_where_it_is_and_never_mounted_from_its_path(tmp_path):
    session = session_at(tmp_path, str(tmp_path / "source"))
    objects = str(session.cwd / ".git" / "objects")
    # Inside the checkout: the staging sandbox sees it through the checkout's own
    # mount, so the agent swapping it for a link cannot have anything else mounted.
    assert own_objects(session, objects) == (objects, False)


def test_a_store_the_agent_points_elsewhere_is_refused(tmp_path):
    session = session_at(tmp_path, str(tmp_path / "source"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.rename(session.cwd / ".git" / "objects", tmp_path / "moved")
    os.symlink(data_dir, session.cwd / ".git" / "objects")
    with pytest.raises(GitError):
        own_objects(session, str(session.cwd / ".git" / "objects"))
    with pytest.raises(GitError):
        own_objects(session, str(data_dir))


def test_a_worktree_of_old_uses_the_store_the_server_names(tmp_path):
    source = tmp_path / "source"
    own = source / ".git" / "worktrees" / "repo"
    (source / ".git" / "objects").mkdir(parents=True)
    own.mkdir(parents=True)
    session = session_at(tmp_path, str(source))
    git_file = session.cwd / ".git"
    os.rename(git_file, tmp_path / "was-a-clone")
    git_file.write_text(f"gitdir: {own}\n")
    (own / "gitdir").write_text(f"{git_file}\n")
    # Named through the agent's files in a roundabout way: the server's own name is used.
    roundabout = str(own / ".." / ".." / "objects")
    store = os.path.realpath(source / ".git" / "objects")
    assert own_objects(session, roundabout) == (store, True)
    # Its gitdir a FIFO: not a worktree of its source (and nothing blocks).
    os.unlink(own / "gitdir")
    os.mkfifo(own / "gitdir")
    with pytest.raises(GitError):
        own_objects(session, roundabout)


def test_a_store_may_borrow_only_from_its_source_repository(tmp_path):
    source = tmp_path / "source"
    (source / ".git" / "objects").mkdir(parents=True)
    session = session_at(tmp_path, str(source))
    objects = session.cwd / ".git" / "objects"
    (objects / "info").mkdir()
    alternates = objects / "info" / "alternates"
    alternates.write_text(f"{source / '.git' / 'objects'}\n")
    assert own_objects(session, str(objects)) == (str(objects), False)
    # Another repository's store, another session's clone: refused.
    other = tmp_path / "sessions" / "s2" / "repo" / ".git" / "objects"
    other.mkdir(parents=True)
    alternates.write_text(f"{source / '.git' / 'objects'}\n{other}\n")
    with pytest.raises(GitError, match="borrows"):
        own_objects(session, str(objects))
    # A FIFO or a link there is not read.
    alternates.unlink()
    os.mkfifo(alternates)
    with pytest.raises(GitError, match="unreadable"):
        own_objects(session, str(objects))
    alternates.unlink()
    os.symlink(tmp_path / "nowhere", alternates)
    with pytest.raises(GitError):
        own_objects(session, str(objects))
    # A GitHub session's clone borrows from nothing.
    github = session_at(tmp_path / "gh", None)
    (github.cwd / ".git" / "objects" / "info").mkdir()
    (github.cwd / ".git" / "objects" / "info" / "alternates").write_text(f"{source}/.git/objects\n")
    with pytest.raises(GitError, match="borrows"):
        own_objects(github, str(github.cwd / ".git" / "objects"))
