"""piserver.repos.catalog with a fake git and a fake GitHub client."""

import json
import os

import pytest
from twisted.internet import defer
from twisted.logger import Logger, formatEvent

from piserver.common.errors import GitError, GithubError, NotFound
from piserver.repos.catalog import RepoCatalog
from tests.support.deferreds import result_of


class FakeGit:
    """Answers for the repositories a test declares; everything else is no repository."""

    def __init__(self):
        self.repos = {}
        self.broken = {}

    def add(self, path, head="main", branches=("main",)):
        os.makedirs(path, exist_ok=True)
        self.repos[path] = {"head": head, "branches": set(branches)}
        return path

    def is_repository_root(self, path):
        if path in self.broken:
            return defer.fail(GitError(self.broken[path]))
        return defer.succeed(path in self.repos)

    def current_branch(self, path):
        return defer.succeed(self.repos[path]["head"])

    def branch_exists(self, path, branch):
        return defer.succeed(branch in self.repos[path]["branches"])


class FakeGithubClient:
    def __init__(self, repos=None, error=None):
        self.repos = repos or []
        self.error = error

    def list_repos(self):
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed([dict(repo) for repo in self.repos])


def github_repo(full_name):
    return {
        "id": full_name,
        "name": full_name.split("/")[1],
        "fullName": full_name,
        "owner": full_name.split("/")[0],
        "private": False,
        "description": None,
        "htmlUrl": f"https://github.com/{full_name}",
        "cloneUrl": f"https://github.com/{full_name}.git",
        "sshUrl": f"git@github.com:{full_name}.git",
        "defaultBranch": "main",
    }


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


@pytest.fixture
def git():
    return FakeGit()


@pytest.fixture
def log_events():
    events = []
    return events, Logger(observer=events.append)


def write_repos(data_dir, document):
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "repos.json"), "w") as f:
        f.write(document if isinstance(document, str) else json.dumps(document))


def catalog(data_dir, git, github=None, log=None):
    return RepoCatalog(data_dir, github, git, log)


# -- local repos -----------------------------------------------------------


def test_no_repos_file_means_no_local_repos_and_no_warning(data_dir, git):
    assert result_of(catalog(data_dir, git).list()) == {"repos": [], "warnings": []}


def test_local_repos_are_listed_with_path_and_default_branch(data_dir, git, tmp_path):
    first = git.add(str(tmp_path / "one"), head="develop", branches=("develop", "main"))
    second = git.add(str(tmp_path / "two"), head="feature", branches=("main", "feature"))
    write_repos(
        data_dir,
        {
            "repos": [
                {"id": "one", "name": "One", "path": first},
                {"id": "two", "name": "Two", "path": second, "defaultBranch": "main"},
            ]
        },
    )

    listing = result_of(catalog(data_dir, git).list())

    assert listing == {
        "repos": [
            {
                "id": "one",
                "name": "One",
                "path": first,
                "defaultBranch": "develop",
                "source": "local",
            },
            {
                "id": "two",
                "name": "Two",
                "path": second,
                "defaultBranch": "main",
                "source": "local",
            },
        ],
        "warnings": [],
    }


def test_a_relative_path_is_relative_to_the_data_directory(data_dir, git):
    repo = git.add(os.path.join(data_dir, "repos", "mine"))
    write_repos(data_dir, {"repos": [{"id": "mine", "name": "Mine", "path": "repos/mine"}]})

    (listed,) = result_of(catalog(data_dir, git).list())["repos"]

    assert listed["path"] == repo


@pytest.mark.parametrize(
    ("document", "warning"),
    [
        ("{not json", "repos.json is not valid JSON"),
        ("[]", 'repos.json must be an object with a "repos" list'),
        ('{"repos": {"id": "x"}}', 'repos.json must be an object with a "repos" list'),
        ("{}", 'repos.json must be an object with a "repos" list'),
    ],
)
def test_a_bad_file_is_a_warning(data_dir, git, document, warning):
    write_repos(data_dir, document)

    listing = result_of(catalog(data_dir, git).list())

    assert listing["repos"] == []
    assert len(listing["warnings"]) == 1
    assert listing["warnings"][0].startswith(warning)


def test_an_unreadable_file_is_a_warning(data_dir, git):
    os.makedirs(os.path.join(data_dir, "repos.json"))

    (warning,) = result_of(catalog(data_dir, git).list())["warnings"]

    assert warning.startswith("repos.json could not be read")


def test_bad_entries_are_skipped_with_a_warning_each(data_dir, git, tmp_path, log_events):
    good = git.add(str(tmp_path / "good"))
    detached = git.add(str(tmp_path / "detached"), head=None)
    plain = tmp_path / "plain"
    plain.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    entries = [
        "not an object",
        {"name": "no id", "path": good},
        {"id": 7, "name": "bad id", "path": good},
        {"id": "no-path", "name": "No path"},
        {"id": "blank", "name": "  ", "path": good},
        {"id": "bad-branch", "name": "B", "path": good, "defaultBranch": 3},
        {"id": "missing", "name": "Missing", "path": str(tmp_path / "nowhere")},
        {"id": "file", "name": "File", "path": str(a_file)},
        {"id": "plain", "name": "Plain", "path": str(plain)},
        {"id": "detached", "name": "Detached", "path": detached},
        {"id": "no-such-branch", "name": "N", "path": good, "defaultBranch": "gone"},
        {"id": "good", "name": "Good", "path": good},
        {"id": "good", "name": "Good again", "path": good},
    ]
    write_repos(data_dir, {"repos": entries})
    events, log = log_events

    listing = result_of(catalog(data_dir, git, log=log).list())

    assert [repo["id"] for repo in listing["repos"]] == ["good"]
    assert listing["warnings"] == [
        "repos.json entry 0 is not an object; skipped",
        'repos.json entry 1: "id" must be a non-empty string; skipped',
        'repos.json entry 2: "id" must be a non-empty string; skipped',
        'repos.json entry 3: "path" must be a non-empty string; skipped',
        'repos.json entry 4: "name" must be a non-empty string; skipped',
        'repos.json entry 5: "defaultBranch" must be a non-empty string when given; skipped',
        f"repos.json repo 'missing': path {tmp_path / 'nowhere'} does not exist or is not a "
        "directory; skipped",
        f"repos.json repo 'file': path {a_file} does not exist or is not a directory; skipped",
        f"repos.json repo 'plain': {plain} is not the top of a git repository; skipped",
        "repos.json repo 'detached': HEAD is detached, so the default branch is unknown; "
        'set "defaultBranch"; skipped',
        "repos.json repo 'no-such-branch': branch 'gone' does not exist; skipped",
        "repos.json: id 'good' appears more than once; skipped",
    ]
    logged = "\n".join(formatEvent(event) for event in events)
    assert all(warning in logged for warning in listing["warnings"])


def test_a_git_failure_while_checking_is_a_warning(data_dir, git, tmp_path):
    path = str(tmp_path / "odd")
    os.makedirs(path)
    git.broken[path] = "git rev-parse timed out after 60 s"
    write_repos(data_dir, {"repos": [{"id": "odd", "name": "Odd", "path": path}]})

    listing = result_of(catalog(data_dir, git).list())

    assert listing["repos"] == []
    assert listing["warnings"] == [
        "repos.json repo 'odd': git rev-parse timed out after 60 s; skipped"
    ]


# -- with GitHub -----------------------------------------------------------


def test_github_repos_follow_the_local_ones(data_dir, git, tmp_path):
    local = git.add(str(tmp_path / "local"))
    write_repos(data_dir, {"repos": [{"id": "local", "name": "Local", "path": local}]})
    github = FakeGithubClient([github_repo("octo/a"), github_repo("octo/b")])

    listing = result_of(catalog(data_dir, git, github).list())

    assert [(repo["id"], repo["source"]) for repo in listing["repos"]] == [
        ("local", "local"),
        ("octo/a", "github"),
        ("octo/b", "github"),
    ]
    assert "path" not in listing["repos"][1]
    assert listing["warnings"] == []


def test_a_github_failure_without_local_repos_is_an_error(data_dir, git):
    github = FakeGithubClient(error=GithubError("GitHub answered 500 Internal Server Error"))

    with pytest.raises(GithubError, match="500"):
        result_of(catalog(data_dir, git, github).list())


def test_a_github_failure_beside_local_repos_is_a_warning(data_dir, git, tmp_path):
    local = git.add(str(tmp_path / "local"))
    write_repos(data_dir, {"repos": [{"id": "local", "name": "Local", "path": local}]})
    github = FakeGithubClient(error=GithubError("GitHub rejected the token"))

    listing = result_of(catalog(data_dir, git, github).list())

    assert [repo["id"] for repo in listing["repos"]] == ["local"]
    assert listing["warnings"] == ["GitHub rejected the token"]


def test_a_local_repo_hides_a_github_repo_with_the_same_id(data_dir, git, tmp_path):
    local = git.add(str(tmp_path / "local"))
    write_repos(data_dir, {"repos": [{"id": "octo/a", "name": "Mine", "path": local}]})
    github = FakeGithubClient([github_repo("octo/a"), github_repo("octo/b")])

    listing = result_of(catalog(data_dir, git, github).list())

    assert [(repo["id"], repo["source"]) for repo in listing["repos"]] == [
        ("octo/a", "local"),
        ("octo/b", "github"),
    ]
    assert listing["warnings"] == [
        "GitHub repo 'octo/a' is hidden by the local repo with the same id"
    ]


# -- lookup ----------------------------------------------------------------


def test_lookup_finds_local_and_github_repos(data_dir, git, tmp_path):
    local = git.add(str(tmp_path / "local"))
    write_repos(data_dir, {"repos": [{"id": "local", "name": "Local", "path": local}]})
    repos = catalog(data_dir, git, FakeGithubClient([github_repo("octo/a")]))

    assert result_of(repos.lookup("local"))["path"] == local
    assert result_of(repos.lookup("octo/a"))["cloneUrl"] == "https://github.com/octo/a.git"


def test_lookup_of_an_unknown_id_is_not_found(data_dir, git):
    repos = catalog(data_dir, git, FakeGithubClient([github_repo("octo/a")]))

    with pytest.raises(NotFound):
        result_of(repos.lookup("../../etc"))


def test_lookup_while_github_fails(data_dir, git, tmp_path):
    local = git.add(str(tmp_path / "local"))
    write_repos(data_dir, {"repos": [{"id": "local", "name": "Local", "path": local}]})
    repos = catalog(data_dir, git, FakeGithubClient(error=GithubError("GitHub is down")))

    assert result_of(repos.lookup("local"))["source"] == "local"
    with pytest.raises(GithubError, match="GitHub is down"):
        result_of(repos.lookup("octo/a"))
