"""
RepoCatalog over real git and a GitHub stand-in on loopback, through treq.
"""

import json
import os

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from piserver.common.errors import GithubError, NotFound
from piserver.repos.catalog import RepoCatalog
from piserver.repos.git import Git
from piserver.repos.github import GithubClient
from tests.support.fakegithub import TEST_TOKEN, git_env, make_repository

TOKEN = TEST_TOKEN


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return str(path)


@pytest.fixture
def git():
    return Git(reactor, env=git_env())


def github_client(api_url, token=TOKEN, timeout=10.0):
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    return GithubClient(http, api_url, token, reactor, timeout=timeout)


def write_repos(data_dir, entries):
    with open(os.path.join(data_dir, "repos.json"), "w") as f:
        json.dump({"repos": entries}, f)


def local_repo(tmp_path, name="project", branch="trunk"):
    return make_repository(str(tmp_path / name), default_branch=branch)


@pytest_twisted.ensureDeferred
async def test_local_repos_only(data_dir, git, tmp_path):
    good = local_repo(tmp_path)
    (tmp_path / "not-a-repo").mkdir()
    write_repos(
        data_dir,
        [
            {"id": "project", "name": "Project", "path": good},
            {"id": "plain", "name": "Plain", "path": str(tmp_path / "not-a-repo")},
        ],
    )

    listing = await RepoCatalog(data_dir, None, git).list()

    assert listing["repos"] == [
        {
            "id": "project",
            "name": "Project",
            "path": good,
            "defaultBranch": "trunk",
            "source": "local",
        }
    ]
    assert listing["warnings"] == [
        f"repos.json repo 'plain': {tmp_path / 'not-a-repo'} is not the top of a git "
        "repository; skipped"
    ]


@pytest_twisted.ensureDeferred
async def test_github_only_250_repos_over_3_pages(data_dir, git, fake_github):
    fake_github.add_listing_repos(250)

    listing = await RepoCatalog(data_dir, github_client(fake_github.api_url), git).list()

    assert len(listing["repos"]) == 250
    assert {repo["source"] for repo in listing["repos"]} == {"github"}
    assert listing["repos"][-1]["id"] == "octo/repo-0249"
    assert len(fake_github.requests) == 3
    assert listing["warnings"] == []


@pytest_twisted.ensureDeferred
async def test_both_sources_then_a_clone_of_the_github_repo(data_dir, git, fake_github, tmp_path):
    local = local_repo(tmp_path)
    write_repos(data_dir, [{"id": "project", "name": "Project", "path": local}])
    fake_github.add_repo("octo/service", default_branch="develop", files={"app.py": "run()\n"})
    repos = RepoCatalog(data_dir, github_client(fake_github.api_url), git)

    listing = await repos.list()
    remote = await repos.lookup("octo/service")
    dest = os.path.join(data_dir, "sessions", "s1", "repo")
    await git.clone(remote["cloneUrl"], dest, remote["defaultBranch"], token=TOKEN)
    await git.checkout_new_branch(dest, "pi/session-s1")

    assert [(repo["id"], repo["source"]) for repo in listing["repos"]] == [
        ("project", "local"),
        ("octo/service", "github"),
    ]
    assert await git.current_branch(dest) == "pi/session-s1"
    assert os.path.isfile(os.path.join(dest, "app.py"))
    with pytest.raises(NotFound):
        await repos.lookup("octo/elsewhere")


@pytest_twisted.ensureDeferred
async def test_a_rejected_token(data_dir, git, fake_github, tmp_path):
    fake_github.add_listing_repos(2)
    wrong = "ghp_WrongWrongWrong0000000000000"

    with pytest.raises(GithubError) as caught:
        await RepoCatalog(data_dir, github_client(fake_github.api_url, wrong), git).list()
    assert "rejected the token" in caught.value.message
    assert wrong not in caught.value.message

    write_repos(data_dir, [{"id": "project", "name": "Project", "path": local_repo(tmp_path)}])
    listing = await RepoCatalog(data_dir, github_client(fake_github.api_url, wrong), git).list()
    assert [repo["id"] for repo in listing["repos"]] == ["project"]
    assert listing["warnings"] == [caught.value.message]


@pytest_twisted.ensureDeferred
async def test_rate_limited(data_dir, git, fake_github):
    fake_github.mode = "rate_limited"
    fake_github.rate_limit_reset = int(reactor.seconds()) + 15 * 60

    with pytest.raises(GithubError) as caught:
        await RepoCatalog(data_dir, github_client(fake_github.api_url), git).list()

    assert caught.value.message.startswith("GitHub API rate limit exceeded; it resets at ")
    assert caught.value.message.endswith("UTC (in 15 minutes)")


@pytest_twisted.ensureDeferred
async def test_server_error(data_dir, git, fake_github):
    fake_github.mode = "server_error"

    with pytest.raises(GithubError, match="GitHub answered 500 Internal Server Error"):
        await RepoCatalog(data_dir, github_client(fake_github.api_url), git).list()


@pytest_twisted.ensureDeferred
async def test_a_github_that_never_answers(data_dir, git, fake_github):
    fake_github.mode = "hang"
    client = github_client(fake_github.api_url, timeout=0.5)

    with pytest.raises(GithubError, match="did not answer within 0.5 s"):
        await RepoCatalog(data_dir, client, git).list()

    assert len(fake_github.requests) == 1
    # The abandoned request's connection was closed, not left hanging.
    await fake_github.wait_idle()


@pytest_twisted.ensureDeferred
async def test_a_github_that_cannot_be_reached(data_dir, git, fake_github):
    api_url = fake_github.api_url
    await fake_github.stop()

    with pytest.raises(GithubError) as caught:
        await RepoCatalog(data_dir, github_client(api_url), git).list()

    assert caught.value.message.startswith(f"could not reach GitHub at {api_url}: ")
