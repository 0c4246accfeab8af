"""
piserver.repos.git: real git in temporary directories (and, for the process-handling
details, a fake process reactor).
"""

import base64
import os
import stat
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher

from piserver.common.errors import GitError
from piserver.repos.git import Git, summarize_stderr, token_environment, token_header
from tests.support.fakegithub import (
    TEST_TOKEN,
    git_env,
    make_bare_repository,
    make_old_worktree,
    make_repository,
)
from tests.support.fakeprocess import FakeProcessReactor

TOKEN = TEST_TOKEN


def token_forms(token=TOKEN):
    encoded = base64.b64encode(f"x-access-token:{token}".encode())
    return [token.encode(), encoded, token_header(token).encode()]


def git_output(*args, cwd):
    return subprocess.run(
        ["git", *args], cwd=cwd, env=git_env(), check=True, capture_output=True, text=True
    ).stdout


def commit_file(repo, name, content):
    with open(os.path.join(repo, name), "w") as f:
        f.write(content)
    git_output("add", name, cwd=repo)
    git_output("commit", "--quiet", "-m", f"add {name}", cwd=repo)


def files_containing(root, needles):
    found = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            found += [(path, needle) for needle in needles if needle in data]
    return found


@pytest.fixture
def git():
    return Git(reactor, env=git_env())


@pytest.fixture
def source(tmp_path):
    return make_repository(str(tmp_path / "source"), files={"README.md": "hello\n"})


# -- worktrees -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_worktree_remove_keeps_a_branch_with_commits(git, source, tmp_path):
    dest = str(tmp_path / "s" / "repo")
    make_old_worktree(source, dest, "pi/session-s")
    commit_file(dest, "work.txt", "done\n")
    with open(os.path.join(dest, "untracked.txt"), "w") as f:
        f.write("dirty\n")

    await git.worktree_remove(source, dest)

    assert not os.path.exists(dest)
    assert git_output("worktree", "list", "--porcelain", cwd=source).count("worktree ") == 1
    assert await git.branch_has_unmerged_commits(source, "pi/session-s", "main")
    assert await git.branch_exists(source, "pi/session-s")
    assert git_output("status", "--porcelain", cwd=source) == ""


@pytest_twisted.ensureDeferred
async def test_worktree_remove_then_delete_a_branch_without_commits(git, source, tmp_path):
    dest = str(tmp_path / "s" / "repo")
    make_old_worktree(source, dest, "pi/session-s")

    await git.worktree_remove(source, dest)
    assert not await git.branch_has_unmerged_commits(source, "pi/session-s", "main")
    await git.delete_branch(source, "pi/session-s")

    assert not os.path.exists(dest)
    assert not await git.branch_exists(source, "pi/session-s")
    assert await git.current_branch(source) == "main"


@pytest_twisted.ensureDeferred
async def test_worktree_remove_of_a_vanished_checkout_prunes_it(git, source, tmp_path):
    dest = str(tmp_path / "s" / "repo")
    make_old_worktree(source, dest, "pi/session-s")
    subprocess.run(["rm", "-rf", dest], check=True)

    await git.worktree_remove(source, dest)

    assert git_output("worktree", "list", "--porcelain", cwd=source).count("worktree ") == 1
    # The branch is free again: nothing holds it checked out.
    await git.delete_branch(source, "pi/session-s")


@pytest_twisted.ensureDeferred
async def test_repository_checks(git, source, tmp_path):
    bare = make_bare_repository(str(tmp_path / "bare.git"))
    plain = tmp_path / "plain"
    plain.mkdir()
    (tmp_path / "source" / "sub").mkdir()

    assert await git.is_repository_root(source)
    assert await git.is_repository_root(bare)
    assert not await git.is_repository_root(str(plain))
    assert not await git.is_repository_root(os.path.join(source, "sub"))
    assert not await git.is_repository_root(os.path.join(source, ".git"))
    with pytest.raises(GitError, match="cannot change to"):
        await git.is_repository_root(str(tmp_path / "missing"))
    git_output("checkout", "--quiet", "--detach", cwd=source)
    assert await git.current_branch(source) is None
    assert await git.current_branch(bare) == "main"


# -- clones ----------------------------------------------------------------


@pytest.fixture
def log_text():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: "\n".join(formatEvent(event) for event in events)
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.ensureDeferred
async def test_clone_over_http_with_token_then_branch(git, fake_github, tmp_path, log_text):
    repo = fake_github.add_repo("octo/hello", files={"hello.py": "print('hi')\n"})
    url = fake_github.clone_url(repo)
    dest = str(tmp_path / "sessions" / "s1" / "repo")
    progress = []

    await git.clone(url, dest, "main", token=TOKEN, on_progress=progress.append)
    await git.checkout_new_branch(dest, "pi/session-s1")

    assert await git.current_branch(dest) == "pi/session-s1"
    with open(os.path.join(dest, "hello.py")) as f:
        assert f.read() == "print('hi')\n"
    # The token reached the server, through git's environment only ...
    assert token_header(TOKEN).split(": ", 1)[1] in fake_github.git_authorizations
    # ... and is nowhere on disk, not even in .git/config or the remote URL.
    assert files_containing(str(tmp_path / "sessions"), token_forms()) == []
    assert git_output("remote", "get-url", "origin", cwd=dest).strip() == url
    assert progress, "clone reported no progress"
    assert all(TOKEN not in text for text in progress)
    assert "cloned into" in log_text()
    assert all(form.decode() not in log_text() for form in token_forms())


@pytest_twisted.ensureDeferred
async def test_clone_with_a_rejected_token_fails_cleanly(git, fake_github, tmp_path):
    repo = fake_github.add_repo("octo/hello")
    dest = str(tmp_path / "s" / "repo")
    wrong = "ghp_WrongTokenValue999999999999"

    with pytest.raises(GitError) as caught:
        await git.clone(fake_github.clone_url(repo), dest, "main", token=wrong)

    assert caught.value.message.startswith("git clone failed")
    for form in token_forms(wrong):
        assert form.decode() not in caught.value.message
    assert not os.path.exists(dest)
    assert os.path.isdir(str(tmp_path / "s"))


@pytest_twisted.ensureDeferred
async def test_clone_from_a_local_bare_repository(git, tmp_path):
    bare = make_bare_repository(str(tmp_path / "bare.git"), default_branch="trunk")
    dest = str(tmp_path / "s" / "repo")

    await git.clone("file://" + bare, dest, "trunk", token=TOKEN)
    await git.checkout_new_branch(dest, "pi/session-s")

    assert await git.current_branch(dest) == "pi/session-s"
    assert os.path.isfile(os.path.join(dest, "README.md"))
    assert files_containing(dest, token_forms()) == []


@pytest_twisted.ensureDeferred
async def test_clone_of_a_bad_url_leaves_no_directory(git, tmp_path):
    dest = str(tmp_path / "s" / "repo")

    with pytest.raises(GitError) as caught:
        await git.clone("file://" + str(tmp_path / "nowhere.git"), dest, "main")

    assert "nowhere.git" in caught.value.message
    assert not os.path.exists(dest)


@pytest_twisted.ensureDeferred
async def test_clone_of_a_missing_branch_leaves_no_directory(git, tmp_path):
    bare = make_bare_repository(str(tmp_path / "bare.git"))
    dest = str(tmp_path / "s" / "repo")

    with pytest.raises(GitError, match="no-such-branch"):
        await git.clone("file://" + bare, dest, "no-such-branch")

    assert not os.path.exists(dest)


@pytest_twisted.ensureDeferred
async def test_clone_into_an_existing_directory_leaves_it_alone(git, tmp_path):
    bare = make_bare_repository(str(tmp_path / "bare.git"))
    dest = tmp_path / "s" / "repo"
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_text("mine")

    with pytest.raises(GitError, match="already exists"):
        await git.clone("file://" + bare, str(dest), "main")

    assert (dest / "keep.txt").read_text() == "mine"


@pytest_twisted.ensureDeferred
async def test_clone_from_a_server_that_never_answers_times_out(fake_github, tmp_path):
    repo = fake_github.add_repo("octo/slow", with_git_data=False)
    fake_github.git_mode = "hang"
    git = Git(reactor, env=git_env(), clone_timeout=0.5)
    dest = str(tmp_path / "s" / "repo")

    with pytest.raises(GitError, match="timed out after 0.5 s"):
        await git.clone(fake_github.clone_url(repo), dest, "main", token=TOKEN)

    assert fake_github.git_authorizations, "git never reached the server"
    assert not os.path.exists(dest)
    # git's HTTP helper died with it: nothing holds a connection open any more.
    await fake_github.wait_idle()


@pytest_twisted.ensureDeferred
async def test_a_git_ignoring_sigterm_is_killed_and_its_directory_removed(tmp_path):
    # A stand-in git that creates the destination, then ignores SIGTERM and hangs.
    script = tmp_path / "stubborn-git"
    script.write_text(
        '#!/bin/sh\ntrap "" TERM\nfor last; do :; done\nmkdir -p "$last"\nexec sleep 60\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    git = Git(reactor, git=str(script), env=git_env(), clone_timeout=0.3, kill_grace=0.2)
    dest = str(tmp_path / "s" / "repo")

    with pytest.raises(GitError, match="timed out after 0.3 s"):
        await git.clone("https://github.example/octo/x.git", dest, "main", token=TOKEN)

    assert not os.path.exists(dest)


@pytest_twisted.ensureDeferred
async def test_a_missing_git_executable_is_a_git_error(tmp_path):
    git = Git(reactor, git=str(tmp_path / "no-git-here"), env=git_env())

    with pytest.raises(GitError, match="could not run"):
        await git.current_branch(str(tmp_path))


# -- process handling, with a fake reactor ---------------------------------


def test_git_gets_a_non_interactive_environment_without_inherited_repository_variables():
    fake = FakeProcessReactor()
    base = {
        "PATH": "/usr/bin",
        "GIT_DIR": "/elsewhere",
        "GIT_CONFIG_KEY_0": "x",
        "GIT_ASKPASS": "/usr/bin/askpass",
    }
    git = Git(fake, process_group=False, env=base)

    result = git.run("/repo", ["status", "--porcelain"], "git status")
    spawn = fake.spawned[0]
    spawn.process.stdout(b"")
    spawn.process.end(0)

    assert spawn.args == ["git", "-C", "/repo", "status", "--porcelain"]
    assert spawn.process.stdin_closed
    assert "GIT_DIR" not in spawn.env and "GIT_CONFIG_KEY_0" not in spawn.env
    assert spawn.env["PATH"] == "/usr/bin"
    assert spawn.env["GIT_TERMINAL_PROMPT"] == "0"
    assert spawn.env["GIT_ASKPASS"] == ""
    assert "GIT_CONFIG_COUNT" not in spawn.env
    assert result.result == (0, b"")


def test_the_token_goes_only_into_the_clone_processes_environment():
    fake = FakeProcessReactor()
    git = Git(fake, process_group=False, env={"PATH": "/usr/bin"})

    git.clone("https://github.com/octo/x.git", "/data/s/repo", "main", token=TOKEN)
    spawn = fake.spawned[0]

    assert all(TOKEN not in arg for arg in spawn.args)
    assert spawn.args[-2:] == ["https://github.com/octo/x.git", "/data/s/repo"]
    assert spawn.env["GIT_CONFIG_COUNT"] == "2"
    assert spawn.env["GIT_CONFIG_KEY_0"] == "http.https://github.com/.extraHeader"
    assert spawn.env["GIT_CONFIG_VALUE_0"] == token_header(TOKEN)
    assert spawn.env["GIT_CONFIG_KEY_1"] == "credential.helper"
    assert spawn.env["GIT_CONFIG_VALUE_1"] == ""
    spawn.process.end(0)

    git.current_branch("/data/s/repo")
    assert "GIT_CONFIG_VALUE_0" not in fake.spawned[1].env
    fake.spawned[1].process.end(0)


def test_token_environment_is_scoped_to_the_urls_origin():
    assert token_environment("http://127.0.0.1:8080/git/o/r.git", "t")["GIT_CONFIG_KEY_0"] == (
        "http.http://127.0.0.1:8080/.extraHeader"
    )
    assert token_environment("file:///srv/r.git", "t") == {}
    assert token_environment("git@github.com:o/r.git", "t") == {}


def test_clone_progress_is_reported_at_most_once_a_second():
    fake = FakeProcessReactor()
    git = Git(fake, process_group=False, env={})
    progress = []
    done = git.clone(
        "https://github.com/o/r.git", "/nonexistent/dest", "main", on_progress=progress.append
    )
    process = fake.spawned[0].process

    process.stderr(b"Cloning into '/nonexistent/dest'...\n")
    assert progress == ["Cloning into '/nonexistent/dest'..."]
    fake.advance(0.3)
    process.stderr(b"Receiving objects:  10% (1/10)\rReceiving obj")
    process.stderr(b"ects:  50% (5/10)\r")
    assert len(progress) == 1
    fake.advance(0.7)
    assert progress[-1] == "Receiving objects:  50% (5/10)"
    process.stderr(b"Receiving objects: 100% (10/10), done.\n")
    assert len(progress) == 2
    process.end(0)

    assert progress[-1] == "Receiving objects:  50% (5/10)"
    assert done.called and done.result is None


def test_timeout_sends_sigterm_then_sigkill():
    fake = FakeProcessReactor()
    git = Git(fake, process_group=False, env={}, timeout=60, kill_grace=5)
    result = git.run("/repo", ["status", "--porcelain"], "git status")
    process = fake.spawned[0].process
    process.stderr(b"working...\n")

    fake.advance(59.9)
    assert process.signals == []
    fake.advance(0.1)
    assert process.signals == ["TERM"]
    fake.advance(5)
    assert process.signals == ["TERM", "KILL"]
    process.end(None, signal=9)

    failures = []
    result.addErrback(failures.append)
    assert failures[0].value.message == "git status timed out after 60 s: working..."


def test_errors_carry_gits_message_with_the_token_redacted():
    fake = FakeProcessReactor()
    git = Git(fake, process_group=False, env={})
    failures = []
    git.clone("https://github.com/o/r.git", "/nonexistent/d", "main", token=TOKEN).addErrback(
        failures.append
    )
    encoded = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()

    fake.spawned[0].process.stderr(
        f"Cloning...\nfatal: header {encoded} rejected for {TOKEN}\n".encode()
    )
    fake.spawned[0].process.end(128)

    message = failures[0].value.message
    assert message == "git clone failed (exit 128): Cloning...\nfatal: header *** rejected for ***"


def test_cancelling_kills_the_process():
    fake = FakeProcessReactor()
    git = Git(fake, process_group=False, env={})
    result = git.run("/repo", ["status", "--porcelain"], "git status")
    result.addErrback(lambda failure: failure.trap(defer.CancelledError))

    result.cancel()

    assert fake.spawned[0].process.signals == ["KILL"]


def test_leading_dash_branch_names_are_refused():
    git = Git(FakeProcessReactor(), process_group=False, env={})
    failures = []
    git.checkout_new_branch("/repo", "--orphan").addErrback(failures.append)

    assert failures[0].check(GitError)


def test_summarize_stderr_keeps_the_final_state_of_progress_lines():
    stderr = b"Cloning into 'x'...\nReceiving: 1%\rReceiving: 99%\rReceiving: 100%\n\nfatal: boom\n"
    assert summarize_stderr(stderr) == "Cloning into 'x'...\nReceiving: 100%\nfatal: boom"
