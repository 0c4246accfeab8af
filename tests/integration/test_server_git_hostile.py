"""
Issue 21, points 1, 3, 4, 8 and 11: the git the server runs on a session's checkout
(run-end snapshot, session.diff, session.commit, session.push) with the agent's
``.git`` made hostile.  Real git on real repositories; each trap would run as the
server (or see the token) if the server's git read the agent's config.
"""

import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from piserver.repos.checkouts import CheckoutRecord, RepoSource
from piserver.repos.git import Git
from piserver.repos.shipping import Shipping
from piserver.repos.snapshot import Snapshots
from tests.support.fakegithub import (
    TEST_TOKEN,
    git_env,
    make_old_worktree,
    make_repository,
    run_git,
)
from tests.support.hostilegit import (
    CheckoutSession,
    OneRepoCatalog,
    in_thread,
    local_session,
    plant_traps,
    ran,
)

BRANCH = "pi/session-s1"


@pytest.fixture
def markers(tmp_path):
    path = tmp_path / "markers"
    path.mkdir()
    return str(path)


def make_shipping(git, events, repos=None, token=None):
    def publish(session, event_type, payload):
        events.append(payload)

    snapshots = Snapshots(git, in_thread, publish)
    shipping = Shipping(git, snapshots, repos, None, token, publish, author=("T", "t@example"))
    return snapshots, shipping


@pytest_twisted.ensureDeferred
async def test_a_hostile_worktree_config_runs_nothing_and_head_is_not_followed(
    tmp_path, markers, proxy_trap
):
    source = make_repository(
        str(tmp_path / "source"), default_branch="main", files={"app.py": "x = 1\n"}
    )
    git = Git(reactor, env=git_env())
    session = local_session(tmp_path, source, BRANCH, local_clone=False)
    make_old_worktree(source, str(session.cwd), BRANCH)
    main_before = run_git("rev-parse", "main", cwd=source).strip()
    plant_traps(str(session.cwd), markers, proxy_trap.port)
    (session.cwd / "app.py").write_text("x = 2\n")
    (session.cwd / "new.txt").write_text("new\n")
    # Point 3: a nested repository with its own fsmonitor, staged as a gitlink.
    nested = make_repository(str(session.cwd / "nested"), files={"n.txt": "n\n"})
    run_git("config", "core.fsmonitor", os.path.join(markers, "fsmonitor.sh"), cwd=nested)
    # Point 8: the agent points its worktree's HEAD at the user's main.
    head_file = run_git(
        "rev-parse", "--path-format=absolute", "--git-path", "HEAD", cwd=session.cwd
    )
    with open(head_file.strip(), "w") as f:
        f.write("ref: refs/heads/main\n")
    # Point 11: its index a link to an endless device (the copy would fill the disk).
    index = run_git("rev-parse", "--path-format=absolute", "--git-path", "index", cwd=session.cwd)
    os.replace(index.strip(), index.strip() + ".saved")
    os.symlink("/dev/zero", index.strip())

    events = []
    snapshots, shipping = make_shipping(git, events)
    await snapshots.run_ended(session)
    diff = await snapshots.diff(session)
    committed = await shipping.commit(session, "agent work")

    assert ran(markers) == []
    assert proxy_trap.received == []
    assert [e["type"] for e in events if e.get("type") == "files_changed"] == ["files_changed"]
    assert {f["path"] for f in diff["files"]} >= {"app.py", "new.txt", ".gitattributes"}
    # No clean filter rewrote what was staged: the blob is the file as written.
    assert run_git("show", f"{committed['commit']}:app.py", cwd=source) == "x = 2\n"
    # The commit went onto the session's branch by name; main is untouched.
    assert committed["branch"] == BRANCH
    assert run_git("rev-parse", BRANCH, cwd=source).strip() == committed["commit"]
    assert run_git("rev-parse", "main", cwd=source).strip() == main_before
    assert run_git("rev-parse", f"{committed['commit']}^", cwd=source).strip() == main_before


@pytest_twisted.ensureDeferred
async def test_a_hostile_clone_config_cannot_redirect_the_push(
    tmp_path, markers, proxy_trap, fake_github
):
    repo = fake_github.add_repo("octo/hello", files={"hello.py": "print('hi')\n"})
    url = fake_github.clone_url(repo)
    git = Git(reactor, env=git_env())
    session = CheckoutSession(
        "s2", tmp_path / "sessions" / "s2", CheckoutRecord(RepoSource.GITHUB, BRANCH, "main")
    )
    session.directory.mkdir(parents=True)
    await git.clone(url, str(session.cwd), "main", token=TEST_TOKEN)
    await git.checkout_new_branch(str(session.cwd), BRANCH)
    plant_traps(str(session.cwd), markers, proxy_trap.port)
    # The agent also rewrites where "GitHub" is.
    run_git("config", f"url.http://127.0.0.1:{proxy_trap.port}/.insteadOf", url, cwd=session.cwd)
    (session.cwd / "hello.py").write_text("print('bye')\n")
    catalog = OneRepoCatalog({"source": "github", "cloneUrl": url, "fullName": "octo/hello"})
    events = []
    _, shipping = make_shipping(git, events, catalog, TEST_TOKEN)
    session.repo_id = "octo/hello"

    committed = await shipping.commit(session, "bye")
    pushed = await shipping.push(session)

    assert ran(markers) == []
    assert proxy_trap.received == []
    assert pushed["pushed"] and pushed["commit"] == committed["commit"]
    assert run_git("rev-parse", BRANCH, cwd=repo.bare_path).strip() == committed["commit"]
