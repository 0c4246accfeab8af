"""piserver.repos.github against the fake GitHub through StubTreq, with a fake clock."""

import json

import pytest
from treq.testing import StubTreq
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.client import ResponseNeverReceived

from piserver.common.errors import GithubError
from piserver.repos.github import GithubClient, map_repo, parse_link_header
from tests.support import fakehttp
from tests.support.deferreds import result_of
from tests.support.fakegithub import FakeGithub, run_git

TOKEN = "ghp_UnitTestToken000111222333444"
API = "https://api.github.test"
NOW = 1_800_000_000


@pytest.fixture
def clock():
    clock = Clock()
    clock.advance(NOW)
    return clock


@pytest.fixture
def fake(tmp_path):
    return FakeGithub(str(tmp_path), token=TOKEN, base_url=API)


@pytest.fixture
def log_text():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: "\n".join(formatEvent(event) for event in events)
    globalLogPublisher.removeObserver(events.append)


def client_for(fake, clock, token=TOKEN, **kwargs):
    return GithubClient(StubTreq(fake.resource()), API, token, clock, **kwargs)


def github_error(deferred) -> str:
    with pytest.raises(GithubError) as caught:
        result_of(deferred)
    return caught.value.message


# -- listing ---------------------------------------------------------------


def test_lists_250_repos_over_3_pages(fake, clock):
    fake.add_listing_repos(250)

    repos = result_of(client_for(fake, clock).list_repos())

    assert len(repos) == 250
    assert [repo["id"] for repo in repos] == [f"octo/repo-{n:04d}" for n in range(250)]
    assert [request.args.get("page", ["1"])[0] for request in fake.requests] == ["1", "2", "3"]
    first = fake.requests[0]
    assert first.path == "/user/repos"
    assert first.args["per_page"] == ["100"]
    assert first.args["affiliation"] == ["owner,collaborator,organization_member"]
    assert first.args["sort"] == ["full_name"]
    assert all(request.authorization == f"Bearer {TOKEN}" for request in fake.requests)
    assert first.accept == "application/vnd.github+json"
    assert first.user_agent.startswith("pi-server/")


def test_maps_githubs_fields(fake, clock):
    repo = fake.add_repo(
        "Acme/Widget", default_branch="trunk", private=True, description=None, with_git_data=False
    )

    (listed,) = result_of(client_for(fake, clock).list_repos())

    assert listed == {
        "id": "Acme/Widget",
        "name": "Widget",
        "fullName": "Acme/Widget",
        "owner": "Acme",
        "private": True,
        "description": None,
        "htmlUrl": "https://github.example/Acme/Widget",
        "cloneUrl": fake.clone_url(repo),
        "sshUrl": "git@github.example:Acme/Widget.git",
        "defaultBranch": "trunk",
    }


def test_an_empty_account_lists_nothing(fake, clock):
    assert result_of(client_for(fake, clock).list_repos()) == []
    assert len(fake.requests) == 1


def test_map_repo_skips_entries_missing_what_a_clone_needs():
    assert map_repo("not a dict") is None
    assert map_repo({"full_name": "a/b", "clone_url": "https://x/a/b.git"}) is None
    assert map_repo({"full_name": "a/b", "default_branch": "main"}) is None
    minimal = map_repo({"full_name": "a/b", "clone_url": "u", "default_branch": "main"})
    assert minimal["name"] == "b" and minimal["owner"] == "a" and minimal["private"] is False


# -- caching ---------------------------------------------------------------


def test_results_are_cached_for_a_minute(fake, clock):
    fake.add_listing_repos(3)
    client = client_for(fake, clock)

    first = result_of(client.list_repos())
    first[0]["name"] = "mutated by a caller"
    clock.advance(59)
    second = result_of(client.list_repos())
    assert len(fake.requests) == 1
    assert second[0]["name"] == "repo-0000"

    clock.advance(2)
    result_of(client.list_repos())
    assert len(fake.requests) == 2


def test_errors_are_not_cached(fake, clock):
    fake.add_listing_repos(1)
    client = client_for(fake, clock)
    fake.mode = "server_error"
    github_error(client.list_repos())

    fake.mode = "ok"
    assert len(result_of(client.list_repos())) == 1


class ManualHttp:
    """An HTTP client whose answers the test gives by hand."""

    def __init__(self):
        self.requests = []

    def get(self, url, headers=None):
        answer = defer.Deferred()
        self.requests.append((url, answer))
        return answer


class FakeResponse(fakehttp.FakeResponse):
    def __init__(self, code, body, headers=None):
        from twisted.web.http_headers import Headers

        super().__init__(code, body)
        self.headers = Headers({name: [value] for name, value in (headers or {}).items()})


def test_callers_arriving_during_a_listing_share_it(clock):
    http = ManualHttp()
    client = GithubClient(http, API, TOKEN, clock)
    first, second = client.list_repos(), client.list_repos()
    assert len(http.requests) == 1

    repo = {"full_name": "a/b", "clone_url": "https://x/a/b.git", "default_branch": "main"}
    http.requests[0][1].callback(FakeResponse(200, json.dumps([repo]).encode()))

    assert [r["id"] for r in result_of(first)] == ["a/b"]
    assert [r["id"] for r in result_of(second)] == ["a/b"]


def test_a_cancelled_caller_does_not_stop_the_listing_for_others(clock):
    http = ManualHttp()
    client = GithubClient(http, API, TOKEN, clock)
    first, second = client.list_repos(), client.list_repos()
    first.addErrback(lambda failure: failure.trap(defer.CancelledError))
    first.cancel()

    http.requests[0][1].callback(FakeResponse(200, b"[]"))

    assert result_of(second) == []


# -- errors ----------------------------------------------------------------


def test_a_rejected_token(fake, clock, log_text):
    wrong = "ghp_NotTheRightToken9876543210"
    message = github_error(client_for(fake, clock, token=wrong).list_repos())

    assert message == "GitHub rejected the token (401 Bad credentials): check GITHUB_TOKEN"
    assert wrong not in log_text()
    assert "rejected the token" in log_text()


def test_rate_limit_says_when_it_resets(fake, clock):
    fake.mode = "rate_limited"
    fake.rate_limit_reset = NOW + 9 * 60 + 30

    message = github_error(client_for(fake, clock).list_repos())

    assert message == (
        "GitHub API rate limit exceeded; it resets at 2027-01-15 08:09:30 UTC (in 10 minutes)"
    )


class OneAnswer(resource.Resource):
    isLeaf = True

    def __init__(self, code, body, headers=None):
        super().__init__()
        self._code, self._body, self._headers = code, body, headers or {}

    def render_GET(self, request):
        request.setResponseCode(self._code)
        for name, value in self._headers.items():
            request.setHeader(name, value)
        return self._body


def answer(clock, code, body, headers=None):
    http = StubTreq(OneAnswer(code, body, headers))
    return github_error(GithubClient(http, API, TOKEN, clock).list_repos())


def test_secondary_rate_limit_says_when_to_retry(clock):
    message = answer(
        clock,
        429,
        b'{"message": "You have exceeded a secondary rate limit"}',
        {"retry-after": "60"},
    )
    assert message == (
        "GitHub is rate limiting requests (429); retry in 60 seconds: "
        "You have exceeded a secondary rate limit"
    )


def test_forbidden_without_a_rate_limit_gives_githubs_reason(clock):
    message = answer(clock, 403, b'{"message": "Resource protected by SAML enforcement"}')
    assert message == "GitHub answered 403 Forbidden: Resource protected by SAML enforcement"


def test_a_rate_limit_without_a_reset_time(clock):
    message = answer(clock, 403, b"{}", {"x-ratelimit-remaining": "0"})
    assert message == "GitHub API rate limit exceeded; it did not say when it resets"


def test_server_error(fake, clock):
    fake.mode = "server_error"
    assert github_error(client_for(fake, clock).list_repos()) == (
        "GitHub answered 500 Internal Server Error: Server Error"
    )


def test_a_non_json_error_body_is_quoted_briefly(clock):
    message = answer(clock, 502, b"<html>\n  Bad   gateway " + b"x" * 500 + b"</html>")
    assert message.startswith("GitHub answered 502 Bad Gateway: <html> Bad gateway xxx")
    assert len(message) < 400


def test_an_error_echoing_the_token_is_redacted(clock):
    message = answer(clock, 400, json.dumps({"message": f"bad header Bearer {TOKEN}"}).encode())
    assert message == "GitHub answered 400 Bad Request: bad header Bearer ***"


def test_an_unexpected_answer(clock):
    assert answer(clock, 200, b'{"message": "not a list"}') == (
        f"GitHub ({API}) sent an unexpected answer to /user/repos"
    )


def test_a_github_that_never_answers_times_out(fake, clock):
    fake.mode = "hang"
    listing = client_for(fake, clock, timeout=30).list_repos()
    clock.advance(29)
    assert not listing.called

    clock.advance(1)

    assert github_error(listing) == f"GitHub ({API}) did not answer within 30 s"


class FailingHttp:
    def __init__(self, exception):
        self._exception = exception

    def get(self, url, headers=None):
        return defer.fail(self._exception)


@pytest.mark.parametrize(
    ("exception", "reason"),
    [
        (error.ConnectionRefusedError(), "Connection was refused by other side"),
        (error.DNSLookupError("api.github.test"), "DNS lookup failed"),
        (
            ResponseNeverReceived([Failure(error.ConnectionLost("reset by peer"))]),
            "reset by peer",
        ),
    ],
)
def test_network_errors(clock, exception, reason):
    message = github_error(GithubClient(FailingHttp(exception), API, TOKEN, clock).list_repos())

    assert message.startswith(f"could not reach GitHub at {API}: ")
    assert reason in message


def test_a_next_link_to_another_host_is_not_followed(clock):
    http = StubTreq(
        OneAnswer(200, b"[]", {"link": '<https://evil.example/user/repos?page=2>; rel="next"'})
    )
    listing = GithubClient(http, API, TOKEN, clock).list_repos()
    assert github_error(listing) == "GitHub's next-page link points to another host"


def test_a_next_link_loop_is_an_error(clock):
    http = StubTreq(OneAnswer(200, b"[]", {"link": f'<{API}/user/repos?page=2>; rel="next"'}))
    listing = GithubClient(http, API, TOKEN, clock).list_repos()
    assert github_error(listing) == "GitHub's pagination links go round in a loop"


# -- Link headers ----------------------------------------------------------


def test_parse_link_header_as_github_sends_it():
    header = (
        '<https://api.github.com/user/repos?page=2&per_page=100>; rel="next", '
        '<https://api.github.com/user/repos?page=3&per_page=100>; rel="last"'
    )
    assert parse_link_header(header) == {
        "next": "https://api.github.com/user/repos?page=2&per_page=100",
        "last": "https://api.github.com/user/repos?page=3&per_page=100",
    }


def test_parse_link_header_handles_quoted_commas_several_rels_and_junk():
    header = 'junk, <a>; title="x, y; rel=next"; rel="prev first", <b>;REL=Next,<c>; rel=next, <d>'
    assert parse_link_header(header) == {"prev": "a", "first": "a", "next": "b"}
    assert parse_link_header("") == {}
    assert parse_link_header("<unterminated") == {}


# -- pull requests -----------------------------------------------------------


@pytest.fixture
def repo_with_branch(fake):
    repo = fake.add_repo("octo/app")
    run_git("branch", "feature", "main", cwd=repo.bare_path)
    return repo


def open_pull(fake, clock, **kwargs):
    return client_for(fake, clock, **kwargs).create_pull_request(
        "octo/app", "Add a feature", "feature", "main", "Why and how", draft=True
    )


def test_opens_a_pull_request(fake, clock, repo_with_branch):
    assert result_of(open_pull(fake, clock)) == {
        "number": 1,
        "url": "https://github.example/octo/app/pull/1",
    }
    (pull,) = fake.pull_requests
    assert pull.fields == {
        "title": "Add a feature",
        "head": "feature",
        "base": "main",
        "body": "Why and how",
        "draft": True,
    }
    assert pull.authorization == f"Bearer {TOKEN}"


def test_a_second_pull_request_for_the_same_head_gives_githubs_reason(
    fake, clock, repo_with_branch
):
    result_of(open_pull(fake, clock))
    message = github_error(open_pull(fake, clock))
    assert "422" in message and "A pull request already exists for octo:feature." in message


@pytest.mark.parametrize(
    "mode, fragment",
    [
        ("forbidden", "403 Forbidden: Resource not accessible by personal access token"),
        ("rate_limited", "rate limit exceeded; it resets at"),
    ],
)
def test_pull_request_refusals(fake, clock, repo_with_branch, mode, fragment):
    fake.pulls_mode = mode
    assert fragment in github_error(open_pull(fake, clock))
    assert fake.pull_requests == []


def test_a_pull_request_that_gets_no_answer_times_out(fake, clock, repo_with_branch):
    fake.pulls_mode = "hang"
    pending = open_pull(fake, clock, timeout=5)
    clock.advance(5)
    assert "did not answer within 5 s" in github_error(pending)
