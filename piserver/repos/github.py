"""
The GitHub REST API: the repositories a token can reach.

Every failure becomes a :class:`piserver.common.errors.GithubError` whose message says
what went wrong in words a user can act on; the token never appears in one, nor
in the log.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from urllib.parse import quote, urlencode, urljoin, urlsplit

from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.web.client import ResponseFailed
from twisted.web.error import SchemeNotSupported
from twisted.web.http import RESPONSES
from twisted.web.iweb import IResponse

from piserver import __version__
from piserver.common.errors import GithubError
from piserver.common.httpbody import read_bounded
from piserver.common.outcome import SharedOutcome
from piserver.repos.git import redact

log = Logger()

DEFAULT_API_URL = "https://api.github.com"
REQUEST_TIMEOUT = 30.0
CACHE_SECONDS = 60.0
# A page of 100 repositories is a few hundred KB; a longer answer is not GitHub's.
MAX_ANSWER_BYTES = 32 * 1024 * 1024

_REPOS_QUERY = urlencode(
    {
        "per_page": "100",
        "affiliation": "owner,collaborator,organization_member",
        "sort": "full_name",
    },
    safe=",",
)

_NETWORK_ERRORS = (
    error.ConnectError,
    error.ConnectionLost,
    ResponseFailed,
    SchemeNotSupported,
    OSError,
)


def parse_link_header(value: str) -> dict[str, str]:
    """
    Map each ``rel`` of an RFC 8288 Link header to its target (the first wins).

    Parameter values may be quoted strings holding commas and semicolons, and
    one ``rel`` may name several relations.
    """
    links: dict[str, str] = {}
    scanner = _Scanner(value)
    while scanner.skip_space(","):
        if not scanner.take("<"):
            scanner.skip_past_value()
            continue
        target = scanner.until(">")
        if not scanner.take(">"):
            break
        rels: list[str] = []
        while scanner.skip_space() and scanner.take(";"):
            scanner.skip_space()
            name = scanner.token().lower()
            scanner.skip_space()
            param = ""
            if scanner.take("="):
                scanner.skip_space()
                param = scanner.quoted() if scanner.peek() == '"' else scanner.token()
            if name == "rel" and not rels:
                rels = param.lower().split()
        for rel in rels:
            links.setdefault(rel, target)
        scanner.skip_past_value()
    return links


class _Scanner:
    """A cursor over a header value, for :func:`parse_link_header`."""

    _TOKEN_END = frozenset(' \t;,="<>')

    def __init__(self, text: str):
        self._text = text
        self._position = 0

    def peek(self) -> str:
        return self._text[self._position : self._position + 1]

    def skip_space(self, also: str = "") -> bool:
        """Skip whitespace (and ``also``); whether anything is left."""
        while self.peek() and (self.peek().isspace() or self.peek() in also):
            self._position += 1
        return bool(self.peek())

    def take(self, char: str) -> bool:
        if self.peek() == char:
            self._position += 1
            return True
        return False

    def until(self, char: str) -> str:
        end = self._text.find(char, self._position)
        end = len(self._text) if end < 0 else end
        text, self._position = self._text[self._position : end], end
        return text

    def token(self) -> str:
        start = self._position
        while self.peek() and self.peek() not in self._TOKEN_END:
            self._position += 1
        return self._text[start : self._position]

    def quoted(self) -> str:
        self._position += 1
        chars = []
        while self.peek() and self.peek() != '"':
            if self.peek() == "\\":
                self._position += 1
            chars.append(self.peek())
            self._position += 1
        self._position += 1
        return "".join(chars)

    def skip_past_value(self) -> None:
        """Skip to just after the next comma outside a quoted string."""
        while self.peek() and self.peek() != ",":
            if self.peek() == '"':
                self.quoted()
            else:
                self._position += 1
        self.take(",")


def map_repo(repo: dict) -> dict | None:
    """GitHub's repository object in our shape, or None when it lacks what we need."""
    if not isinstance(repo, dict):
        return None
    full_name = repo.get("full_name")
    clone_url = repo.get("clone_url")
    default_branch = repo.get("default_branch")
    if not all(
        isinstance(value, str) and value for value in (full_name, clone_url, default_branch)
    ):
        return None
    owner = repo.get("owner")
    login = owner.get("login") if isinstance(owner, dict) else None
    name = repo.get("name")
    description = repo.get("description")
    return {
        "id": full_name,
        "name": name if isinstance(name, str) else full_name.rsplit("/", 1)[-1],
        "fullName": full_name,
        "owner": login if isinstance(login, str) else full_name.split("/", 1)[0],
        "private": bool(repo.get("private", False)),
        "description": description if isinstance(description, str) else None,
        "htmlUrl": repo.get("html_url"),
        "cloneUrl": clone_url,
        "sshUrl": repo.get("ssh_url"),
        "defaultBranch": default_branch,
    }


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _timed_out(_result, timeout):
    raise defer.TimeoutError(f"no answer within {timeout} s")


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


class GithubClient:
    """
    Lists the repositories ``token`` can reach through ``http_client`` (treq, a
    ``treq.client.HTTPClient`` or ``treq.testing.StubTreq``).

    ``api_url`` is the API root (``https://api.github.com``, or a GitHub
    Enterprise ``https://host/api/v3``).  Each page request must be answered
    within ``timeout`` seconds of ``clock``; a full listing is reused for
    ``cache_seconds``.
    """

    def __init__(
        self,
        http_client,
        api_url: str,
        token: str,
        clock,
        timeout: float = REQUEST_TIMEOUT,
        cache_seconds: float = CACHE_SECONDS,
    ):
        self._http = http_client
        self._api_url = api_url.rstrip("/")
        self._token = token
        self._clock = clock
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._cached: list[dict] | None = None
        self._cached_at = 0.0
        # The listing under way, which callers arriving meanwhile share; None when idle.
        self._listing: SharedOutcome | None = None

    @property
    def api_url(self) -> str:
        return self._api_url

    def list_repos(self) -> defer.Deferred:
        """Deferred list of repo dicts (see :func:`map_repo`), sorted as GitHub sorts them."""
        if (
            self._cached is not None
            and self._clock.seconds() - self._cached_at < self._cache_seconds
        ):
            return defer.succeed([dict(repo) for repo in self._cached])
        outcome = self._listing
        if outcome is None:
            outcome = self._listing = SharedOutcome()
            listing = defer.Deferred.fromCoroutine(self._list_all())
            listing.addBoth(self._listed, outcome)
        # Each caller gets copies: one changing its list changes nobody else's.
        return outcome.observe().addCallback(lambda repos: [dict(r) for r in repos])

    def _listed(self, result, outcome: SharedOutcome) -> None:
        self._listing = None
        if isinstance(result, list):
            self._cached = result
            self._cached_at = self._clock.seconds()
        elif not outcome.waiting and not result.check(GithubError):
            log.failure("GitHub listing failed with nobody waiting", result)
        outcome.settle(result)

    async def _list_all(self) -> list[dict]:
        started = self._clock.seconds()
        url: str | None = f"{self._api_url}/user/repos?{_REPOS_QUERY}"
        visited: set[str] = set()
        repos: list[dict] = []
        skipped = 0
        while url is not None:
            if url in visited:
                raise GithubError("GitHub's pagination links go round in a loop")
            visited.add(url)
            page, next_url = await self._fetch_page(url)
            for entry in page:
                repo = map_repo(entry)
                if repo is None:
                    skipped += 1
                else:
                    repos.append(repo)
            url = next_url
        if skipped:
            log.warn("GitHub: skipped {count} malformed repository entries", count=skipped)
        log.info(
            "GitHub: {count} repositories in {pages} page(s) from {api} in {duration:.2f}s",
            count=len(repos),
            pages=len(visited),
            api=self._api_url,
            duration=self._clock.seconds() - started,
        )
        return repos

    def create_pull_request(
        self, full_name: str, title: str, head: str, base: str, body: str | None, draft: bool
    ) -> defer.Deferred:
        """
        Deferred ``{"number", "url"}`` of the pull request opened on ``full_name``
        (``owner/repo``) from branch ``head`` into ``base``.
        """
        return defer.Deferred.fromCoroutine(
            self._create_pull_request(full_name, title, head, base, body, draft)
        )

    async def _create_pull_request(self, full_name, title, head, base, body, draft) -> dict:
        fields = {"title": title, "head": head, "base": base, "draft": draft}
        if body is not None:
            fields["body"] = body
        url = f"{self._api_url}/repos/{quote(full_name, safe='/')}/pulls"
        response, answer = await self._call("POST", url, fields)
        if response.code != 201:
            raise self._fail(self._status_message(response, answer))
        try:
            pull = json.loads(answer)
            number, html_url = pull["number"], pull["html_url"]
        except (ValueError, KeyError, TypeError):
            raise self._fail(
                f"GitHub ({self._api_url}) sent an unexpected answer to a pull request"
            ) from None
        log.info(
            "GitHub: opened pull request #{number} on {repo} from {head} into {base}",
            number=number,
            repo=full_name,
            head=head,
            base=base,
        )
        return {"number": number, "url": html_url}

    async def _call(self, method: str, url: str, fields: dict | None = None):
        request = defer.Deferred.fromCoroutine(self._request(url, method, fields))
        # Cancelling may surface as the agent's own error (ResponseNeverReceived
        # wrapping CancelledError); whatever it is, a timeout is a timeout.
        request.addTimeout(self._timeout, self._clock, onTimeoutCancel=_timed_out)
        try:
            return await request
        except defer.TimeoutError:
            raise self._fail(
                f"GitHub ({self._api_url}) did not answer within {self._timeout:g} s"
            ) from None
        except _NETWORK_ERRORS as e:
            raise self._fail(
                f"could not reach GitHub at {self._api_url}: {self._describe(e)}"
            ) from None

    async def _fetch_page(self, url: str) -> tuple[list, str | None]:
        response, body = await self._call("GET", url)
        if response.code != 200:
            raise self._fail(self._status_message(response, body))
        try:
            page = json.loads(body)
        except ValueError:
            page = None
        if not isinstance(page, list):
            raise self._fail(f"GitHub ({self._api_url}) sent an unexpected answer to /user/repos")
        link = _header(response, "Link")
        next_url = parse_link_header(link).get("next") if link else None
        if next_url is not None:
            next_url = urljoin(url, next_url)
            # The token goes with every page: never to another host.
            if _origin(next_url) != _origin(self._api_url):
                raise self._fail("GitHub's next-page link points to another host")
        return page, next_url

    async def _request(
        self, url: str, method: str = "GET", fields: dict | None = None
    ) -> tuple[IResponse, bytes]:
        """``GET url``, or ``POST`` (a treq client has both) of ``fields`` as JSON."""
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": f"pi-server/{__version__}",
        }
        if method == "GET":
            response = await self._http.get(url, headers=headers)
        else:
            response = await self._http.post(url, headers=headers, json=fields)
        body, cut = await read_bounded(response, MAX_ANSWER_BYTES)
        if cut:
            raise self._fail(f"GitHub ({self._api_url}) sent an answer over 32 MiB")
        return response, body

    def _status_message(self, response: IResponse, body: bytes) -> str:
        code = response.code
        detail = self._github_message(body)
        if code == 401:
            return "GitHub rejected the token (401 Bad credentials): check GITHUB_TOKEN"
        if code in (403, 429):
            if _header(response, "x-ratelimit-remaining") == "0":
                return "GitHub API rate limit exceeded; " + self._reset_time(
                    _header(response, "x-ratelimit-reset")
                )
            retry_after = _header(response, "retry-after")
            if retry_after is not None and retry_after.strip().isdigit():
                wait = int(retry_after.strip())
                return (
                    f"GitHub is rate limiting requests ({code}); retry in "
                    f"{_plural(wait, 'second')}" + (f": {detail}" if detail else "")
                )
        phrase = RESPONSES.get(code, b"").decode("ascii", "replace")
        status = f"{code} {phrase}".strip()
        return f"GitHub answered {status}" + (f": {detail}" if detail else "")

    def _reset_time(self, reset: str | None) -> str:
        try:
            reset_at = int(reset.strip())
        except (AttributeError, ValueError):
            return "it did not say when it resets"
        when = datetime.fromtimestamp(reset_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        seconds_left = reset_at - self._clock.seconds()
        if seconds_left <= 0:
            return f"it resets at {when} (now)"
        minutes = math.ceil(seconds_left / 60)
        return f"it resets at {when} (in {_plural(minutes, 'minute')})"

    def _github_message(self, body: bytes) -> str:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if isinstance(answer, dict) and isinstance(answer.get("message"), str):
            text = answer["message"]
            # A 422's reasons ("A pull request already exists for …") are in "errors".
            reasons = [
                reason["message"]
                for reason in answer.get("errors") or ()
                if isinstance(reason, dict) and isinstance(reason.get("message"), str)
            ]
            if reasons:
                text = f"{text}: {'; '.join(reasons)}"
        else:
            text = body.decode("utf-8", "replace")
        text = " ".join(text.split())
        if len(text) > 300:
            text = text[:300] + "…"
        return self._redact(text)

    def _describe(self, failure: Exception) -> str:
        if isinstance(failure, ResponseFailed) and failure.reasons:
            return self._describe(failure.reasons[0].value)
        return self._redact(str(failure) or type(failure).__name__)

    def _redact(self, text: str) -> str:
        return redact(text, (self._token,))

    def _fail(self, message: str) -> GithubError:
        message = self._redact(message)
        log.warn("GitHub: {message}", message=message)
        return GithubError(message)
