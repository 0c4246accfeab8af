"""
A GitHub stand-in on loopback (twisted.web), for integration tests; its
:meth:`FakeGithub.resource` also serves unit tests through ``StubTreq``.

It serves ``GET /user/repos`` the way GitHub does (bearer token, pagination by
``page``/``per_page`` with ``Link`` headers, sorted by full name),
``POST /repos/<owner>/<name>/pulls`` (opens a pull request; 422 when one for that
head exists or the head branch is missing) and the repositories' git data under
``/git/<owner>/<name>.git`` over git's smart HTTP protocol, clone and push, by
``git http-backend`` behind twisted.web's CGI support, from local bare
repositories it creates.  All demand the token.

``mode`` makes the repo listing misbehave: ``"ok"``, ``"rate_limited"`` (403 with
``x-ratelimit-remaining: 0``), ``"server_error"`` (500) or ``"hang"`` (never
answers); ``pulls_mode`` does the same for pull requests (plus ``"forbidden"``,
403).  ``git_mode`` ``"hang"`` makes the git endpoint never answer.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from urllib.parse import urlencode

import attr
from twisted.internet import defer
from twisted.web import resource, server, twcgi

TEST_TOKEN = "ghp_IntegrationToken42424242424242"
"""The token the tests' stand-in accepts (see tests/integration/conftest.py)."""

# Commits in fixtures must work on a machine without any git identity or config.
GIT_TEST_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git_env() -> dict[str, str]:
    """This process's environment with :data:`GIT_TEST_ENV` on top."""
    env = dict(os.environ)
    env.update(GIT_TEST_ENV)
    return env


def run_git(*args: str, cwd: str | None = None, input: str | None = None) -> str:
    """Run git synchronously (fixture set-up only), ``input`` on its stdin; its stdout."""
    completed = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=git_env(),
        input=input,
        check=True,
        capture_output=True,
        text=True,
    )
    return completed.stdout


def make_old_worktree(source: str, dest: str, branch: str, start: str = "main") -> None:
    """A local session's checkout as the server made them before local clones: a
    ``git worktree`` of ``source`` on a new ``branch`` (such sessions are still served)."""
    run_git("-C", source, "worktree", "add", "--quiet", "-b", branch, "--", dest, start)


def make_repository(
    path: str, default_branch: str = "main", files: dict[str, str] | None = None
) -> str:
    """A work-tree repository at ``path`` with one commit of ``files``."""
    files = files if files is not None else {"README.md": "# test\n", "src/app.py": "x = 1\n"}
    run_git("init", "--quiet", f"--initial-branch={default_branch}", path)
    for name, content in files.items():
        target = os.path.join(path, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write(content)
    run_git("add", "--all", cwd=path)
    run_git("commit", "--quiet", "-m", "Initial commit", cwd=path)
    return path


def make_bare_repository(
    path: str, default_branch: str = "main", files: dict[str, str] | None = None
) -> str:
    """A bare repository at ``path`` with one commit of ``files``."""
    work = path + ".work"
    make_repository(work, default_branch, files)
    run_git("clone", "--quiet", "--bare", work, path)
    return path


@attr.s
class FakeRepo:
    full_name: str = attr.ib()
    default_branch: str = attr.ib()
    private: bool = attr.ib()
    description: str | None = attr.ib()
    bare_path: str | None = attr.ib()
    clone_url: str = attr.ib()
    number: int = attr.ib()


@attr.s
class PullRequest:
    full_name: str = attr.ib()
    number: int = attr.ib()
    fields: dict = attr.ib()
    authorization: str | None = attr.ib()

    @property
    def html_url(self) -> str:
        return f"https://github.example/{self.full_name}/pull/{self.number}"


@attr.s
class RecordedRequest:
    path: str = attr.ib()
    args: dict[str, list[str]] = attr.ib()
    authorization: str | None = attr.ib()
    user_agent: str | None = attr.ib()
    accept: str | None = attr.ib()


def _header(request, name: str) -> str | None:
    value = request.getHeader(name)
    return value if value is None or isinstance(value, str) else value.decode("latin-1")


class _Site(server.Site):
    """A Site that tells ``fake`` of each connection it opens and loses."""

    def __init__(self, root, fake: FakeGithub):
        super().__init__(root)
        self._fake = fake

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        lose = channel.connectionLost

        def connection_lost(reason):
            lose(reason)
            self._fake._connection_closed(channel)

        channel.connectionLost = connection_lost
        self._fake._channels.append(channel)
        return channel


class FakeGithub:
    """
    Start with :meth:`start` (listens on 127.0.0.1, port 0), stop with :meth:`stop`.

    ``api_url`` is the root to give to the client; ``requests`` records every API
    request, ``git_authorizations`` the Authorization header of every git request.
    """

    def __init__(
        self,
        root_dir: str,
        token: str = "ghp_fakeToken1234567890",
        reactor=None,
        base_url: str | None = None,
    ):
        self._reactor = reactor
        self._base_url = base_url
        self._root_dir = root_dir
        self.token = token
        self.mode = "ok"
        self.git_mode = "ok"
        self.rate_limit_reset = 1_900_000_000
        self.clone_via = "http"
        self.repos: list[FakeRepo] = []
        self.requests: list[RecordedRequest] = []
        self.git_authorizations: list[str | None] = []
        self.pulls_mode = "ok"
        self.pull_requests: list[PullRequest] = []
        self._hanging: list = []
        self._channels: list = []
        self._idle_waiters: list[defer.Deferred] = []
        self._port = None

    # -- lifecycle -------------------------------------------------------

    def resource(self) -> resource.Resource:
        """The site's root resource (also usable with ``treq.testing.StubTreq``)."""
        root = resource.Resource()
        root.putChild(b"user", _UserResource(self))
        root.putChild(b"git", _GitResource(self))
        root.putChild(b"repos", _PullsResource(self))
        return root

    def start(self) -> FakeGithub:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        site = _Site(self.resource(), self)
        self._port = self._reactor.listenTCP(0, site, interface="127.0.0.1")
        return self

    @property
    def api_url(self) -> str:
        """``base_url`` if given, else the loopback address :meth:`start` listens on."""
        if self._base_url is not None:
            return self._base_url
        return f"http://127.0.0.1:{self._port.getHost().port}"

    def wait_idle(self) -> defer.Deferred:
        """Fires once no client holds a connection open (at once if none does)."""
        if not self._channels:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _connection_closed(self, channel) -> None:
        if channel in self._channels:
            self._channels.remove(channel)
        if not self._channels:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def stop(self) -> defer.Deferred:
        for channel in list(self._channels):
            transport = getattr(channel, "transport", None)
            if transport is not None and transport.connected:
                transport.abortConnection()
        self._hanging.clear()
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)

    # -- repositories ----------------------------------------------------

    def add_repo(
        self,
        full_name: str,
        default_branch: str = "main",
        files: dict[str, str] | None = None,
        private: bool = False,
        description: str | None = "a test repository",
        with_git_data: bool = True,
    ) -> FakeRepo:
        """
        List ``full_name``; with ``with_git_data`` also create its bare repository
        (one commit of ``files`` on ``default_branch``) to clone from.
        """
        bare_path = None
        if with_git_data:
            bare_path = os.path.join(self._root_dir, "bare", full_name + ".git")
            os.makedirs(os.path.dirname(bare_path), exist_ok=True)
            make_bare_repository(bare_path, default_branch, files)
        repo = FakeRepo(
            full_name=full_name,
            default_branch=default_branch,
            private=private,
            description=description,
            bare_path=bare_path,
            clone_url="",
            number=len(self.repos) + 1,
        )
        self.repos.append(repo)
        return repo

    def add_listing_repos(self, count: int, owner: str = "octo") -> list[FakeRepo]:
        """``count`` repositories that are listed but have no git data."""
        return [
            self.add_repo(f"{owner}/repo-{index:04d}", with_git_data=False)
            for index in range(count)
        ]

    def clone_url(self, repo: FakeRepo) -> str:
        if self.clone_via == "file" and repo.bare_path is not None:
            return "file://" + repo.bare_path
        return f"{self.api_url}/git/{repo.full_name}.git"

    def repo_json(self, repo: FakeRepo) -> dict:
        owner, name = repo.full_name.split("/", 1)
        return {
            "id": 1000 + repo.number,
            "node_id": f"R_{repo.number}",
            "name": name,
            "full_name": repo.full_name,
            "private": repo.private,
            "owner": {"login": owner, "id": 1, "type": "User"},
            "html_url": f"https://github.example/{repo.full_name}",
            "description": repo.description,
            "fork": False,
            "url": f"{self.api_url}/repos/{repo.full_name}",
            "clone_url": self.clone_url(repo),
            "ssh_url": f"git@github.example:{repo.full_name}.git",
            "default_branch": repo.default_branch,
            "permissions": {"admin": True, "push": True, "pull": True},
        }

    # -- helpers for the resources ---------------------------------------

    def _token_valid(self, authorization: str | None) -> bool:
        if authorization is None:
            return False
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme in ("bearer", "token"):
            return credentials.strip() == self.token
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credentials.strip()).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            return decoded.split(":", 1)[-1] == self.token
        return False

    def _hang(self, request):
        self._hanging.append(request)
        return server.NOT_DONE_YET


def _json(request, code: int, body, headers: dict[str, str] | None = None) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    for name, value in (headers or {}).items():
        request.setHeader(name.encode(), value.encode())
    return json.dumps(body).encode()


class _UserResource(resource.Resource):
    def __init__(self, fake: FakeGithub):
        super().__init__()
        self.putChild(b"repos", _ReposResource(fake))


class _ReposResource(resource.Resource):
    isLeaf = True

    def __init__(self, fake: FakeGithub):
        super().__init__()
        self._fake = fake

    def render_GET(self, request):
        fake = self._fake
        args = {
            key.decode(): [value.decode() for value in values]
            for key, values in request.args.items()
        }
        authorization = _header(request, "authorization")
        fake.requests.append(
            RecordedRequest(
                path=request.path.decode(),
                args=args,
                authorization=authorization,
                user_agent=_header(request, "user-agent"),
                accept=_header(request, "accept"),
            )
        )
        if fake.mode == "hang":
            return fake._hang(request)
        if not fake._token_valid(authorization):
            return _json(
                request,
                401,
                {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
            )
        if fake.mode == "rate_limited":
            return _json(
                request,
                403,
                {"message": "API rate limit exceeded for user ID 1."},
                {
                    "x-ratelimit-limit": "5000",
                    "x-ratelimit-remaining": "0",
                    "x-ratelimit-used": "5000",
                    "x-ratelimit-reset": str(fake.rate_limit_reset),
                },
            )
        if fake.mode == "server_error":
            return _json(request, 500, {"message": "Server Error"})
        per_page = min(max(int(args.get("per_page", ["30"])[0]), 1), 100)
        page = max(int(args.get("page", ["1"])[0]), 1)
        repos = sorted(fake.repos, key=lambda repo: repo.full_name.lower())
        last_page = max((len(repos) + per_page - 1) // per_page, 1)
        chosen = repos[(page - 1) * per_page : page * per_page]
        links = []
        if page < last_page:
            links += [(page + 1, "next"), (last_page, "last")]
        if page > 1:
            links += [(page - 1, "prev"), (1, "first")]
        headers = {"x-ratelimit-remaining": "4999"}
        if links:
            headers["link"] = ", ".join(
                f'<{self._page_url(args, number)}>; rel="{rel}"' for number, rel in links
            )
        return _json(request, 200, [fake.repo_json(repo) for repo in chosen], headers)

    def _page_url(self, args: dict[str, list[str]], page: int) -> str:
        query = {key: values[0] for key, values in args.items()}
        query["page"] = str(page)
        return f"{self._fake.api_url}/user/repos?{urlencode(query)}"


class _PullsResource(resource.Resource):
    """``POST /repos/<owner>/<name>/pulls``: open a pull request."""

    isLeaf = True

    def __init__(self, fake: FakeGithub):
        super().__init__()
        self._fake = fake

    def render_POST(self, request):
        fake = self._fake
        segments = [segment.decode() for segment in request.postpath]
        authorization = _header(request, "authorization")
        if fake.pulls_mode == "hang":
            return fake._hang(request)
        if not fake._token_valid(authorization):
            return _json(request, 401, {"message": "Bad credentials"})
        if fake.pulls_mode == "rate_limited":
            return _json(
                request,
                403,
                {"message": "API rate limit exceeded for user ID 1."},
                {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(fake.rate_limit_reset)},
            )
        if fake.pulls_mode == "forbidden":
            return _json(
                request, 403, {"message": "Resource not accessible by personal access token"}
            )
        full_name = "/".join(segments[:2])
        repo = next((r for r in fake.repos if r.full_name == full_name), None)
        if len(segments) != 3 or segments[2] != "pulls" or repo is None:
            return _json(request, 404, {"message": "Not Found"})
        try:
            fields = json.loads(request.content.read())
        except ValueError:
            return _json(request, 400, {"message": "Problems parsing JSON"})
        head, base = fields.get("head"), fields.get("base")
        problems = [
            f"{name} is invalid"
            for name, branch in (("head", head), ("base", base))
            if not isinstance(branch, str) or not _branch_exists(repo, branch)
        ]
        if any(
            p.fields.get("head") == head and p.full_name == full_name for p in fake.pull_requests
        ):
            owner = full_name.split("/", 1)[0]
            problems.append(f"A pull request already exists for {owner}:{head}.")
        if problems:
            return _json(
                request,
                422,
                {
                    "message": "Validation Failed",
                    "errors": [
                        {"resource": "PullRequest", "code": "custom", "message": problem}
                        for problem in problems
                    ],
                },
            )
        pull = PullRequest(full_name, len(fake.pull_requests) + 1, fields, authorization)
        fake.pull_requests.append(pull)
        return _json(
            request,
            201,
            {
                "number": pull.number,
                "html_url": pull.html_url,
                "url": f"{fake.api_url}/repos/{full_name}/pulls/{pull.number}",
                "state": "open",
                "title": fields.get("title"),
                "draft": bool(fields.get("draft")),
                "head": {"ref": head},
                "base": {"ref": base},
            },
        )


def _branch_exists(repo: FakeRepo, branch: str) -> bool:
    if repo.bare_path is None:
        return False
    completed = subprocess.run(
        ["git", "-C", repo.bare_path, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
        env=git_env(),
        capture_output=True,
    )
    return completed.returncode == 0


class _GitHttpBackend(twcgi.CGIScript):
    """``git http-backend`` over the stand-in's bare repositories, pushes allowed."""

    def __init__(self, project_root: str, reactor=None):
        exec_path = subprocess.run(
            ["git", "--exec-path"], capture_output=True, text=True, check=True
        ).stdout.strip()
        super().__init__(os.path.join(exec_path, "git-http-backend"), reactor=reactor)
        self._project_root = project_root

    def runProcess(self, env, request, qargs=()):
        # Our own GIT_* (a test's GIT_DIR, ...) must not redirect the backend.
        env = {
            key: value
            for key, value in env.items()
            if not (key if isinstance(key, str) else key.decode("latin-1")).startswith("GIT_")
        }
        env.update(GIT_TEST_ENV)
        env["GIT_PROJECT_ROOT"] = self._project_root
        env["GIT_HTTP_EXPORT_ALL"] = "1"
        # http-backend serves receive-pack (pushes) to authenticated users only.
        env["REMOTE_USER"] = "x-access-token"
        super().runProcess(env, request, [])


class _GitResource(resource.Resource):
    """The bare repositories over smart HTTP (clone and push), behind the token."""

    isLeaf = True

    def __init__(self, fake: FakeGithub):
        super().__init__()
        self._fake = fake
        self._backend = None

    def render(self, request):
        fake = self._fake
        authorization = _header(request, "authorization")
        fake.git_authorizations.append(authorization)
        if fake.git_mode == "hang":
            return fake._hang(request)
        if not fake._token_valid(authorization):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="GitHub"')
            return b"authentication required\n"
        path = "/".join(segment.decode() for segment in request.postpath)
        for repo in fake.repos:
            prefix = repo.full_name + ".git/"
            if (
                repo.bare_path is not None
                and path.startswith(prefix)
                and os.path.isdir(repo.bare_path)
                and ".." not in path.split("/")
            ):
                if self._backend is None:
                    self._backend = _GitHttpBackend(
                        os.path.join(fake._root_dir, "bare"), reactor=fake._reactor
                    )
                # twcgi joins postpath into PATH_INFO as text (a bytes postpath breaks it).
                request.postpath = path.split("/")
                return self._backend.render(request)
        request.setResponseCode(404)
        return b"not found\n"
