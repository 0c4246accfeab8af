"""
git as a child process, never blocking the reactor.

Every command runs with a timeout (SIGTERM, then SIGKILL after a grace period)
and without any way to prompt.  A GitHub token reaches git only through the
environment of the one process that needs it, as an ``http.<origin>.extraHeader``
given by ``GIT_CONFIG_*`` variables: never in a URL, an argument, ``.git/config``
or any other file.  Errors are :class:`piserver.common.errors.GitError` carrying git's
own message with the token redacted.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from urllib.parse import urlsplit

import attr
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from piserver.common.errors import GitError
from piserver.common.processes import Confine, TermThenKill, signal_group
from piserver.common.secrets import without_secrets

log = Logger()

CLONE_TIMEOUT = 300.0
COMMAND_TIMEOUT = 60.0
KILL_GRACE = 5.0
PROGRESS_INTERVAL = 1.0

# Variables that would point git at another repository, index or config than
# the one a command names; inherited ones (say, from a hook) must not leak in.
_INHERITED_GIT_VARIABLES = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_PREFIX",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
    }
)
_INHERITED_GIT_PREFIXES = ("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")

# git must fail rather than wait for someone to type a password; the C locale
# keeps its messages (and progress lines) in English.
_NON_INTERACTIVE = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",
    "SSH_ASKPASS": "",
    "GCM_INTERACTIVE": "never",
    "LC_ALL": "C",
}

# git runs its transport helpers (git-remote-https, ...) as children that do
# not die with it; a timed-out clone must take them along.  Each git therefore
# starts in a process group of its own, made by this tiny launcher (Twisted's
# spawnProcess has no setsid/preexec hook), and signals go to the whole group.
_LAUNCHER = (
    "import os, sys\n"
    "os.setpgid(0, 0)\n"
    "try:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "except OSError as e:\n"
    "    sys.stderr.write('could not run %s: %s\\n' % (sys.argv[1], e.strerror))\n"
    "    os._exit(127)\n"
)

_STDERR_KEPT = 64 * 1024
_MESSAGE_LINES = 12
_MESSAGE_CHARS = 2000
_LINE_BREAK = re.compile(r"[\r\n]")


def _deferred(method):
    """Expose a coroutine method as one returning a Deferred."""

    @wraps(method)
    def run(*args, **kwargs):
        return defer.Deferred.fromCoroutine(method(*args, **kwargs))

    return run


def token_header(token: str) -> str:
    """The HTTP header git sends for ``token`` (GitHub's x-access-token basic form)."""
    credentials = base64.b64encode(f"x-access-token:{token}".encode()).decode("ascii")
    return f"Authorization: Basic {credentials}"


def token_environment(url: str, token: str) -> dict[str, str]:
    """
    Environment giving ``token`` to git for requests to ``url``'s origin only.

    ``credential.helper`` is reset so that no configured helper stores or offers
    anything.  Non-HTTP URLs (file paths, ssh) get nothing: they cannot use it.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return {}
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return {
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": f"http.{scheme}://{host}/.extraHeader",
        "GIT_CONFIG_VALUE_0": token_header(token),
        "GIT_CONFIG_KEY_1": "credential.helper",
        "GIT_CONFIG_VALUE_1": "",
    }


def _secrets_of(token: str | None) -> tuple[str, ...]:
    if not token:
        return ()
    header = token_header(token)
    encoded = header.rsplit(" ", 1)[1]
    return (header, encoded, token)


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """``text`` without the values of ``secrets`` (a token git or GitHub might echo in an
    error): what reaches a client, masked ``***``. The log's redactor
    (``security.redact``) replaces the same way (``common.secrets``)."""
    return without_secrets(text, secrets, "***")


def summarize_stderr(stderr: bytes) -> str:
    """git's last meaningful lines: progress updates collapse to their final state."""
    lines = []
    for raw_line in stderr.decode("utf-8", "replace").split("\n"):
        # A progress line rewrites itself with \r; what is left is its last state.
        states = [state.strip() for state in raw_line.split("\r") if state.strip()]
        if states:
            lines.append(states[-1])
    text = "\n".join(lines[-_MESSAGE_LINES:])
    if len(text) > _MESSAGE_CHARS:
        text = "…" + text[-_MESSAGE_CHARS:]
    return text


def _check_branch_name(branch: str) -> None:
    # git would read a leading dash as an option; nothing legitimate starts with one.
    if not isinstance(branch, str) or not branch or branch.startswith("-"):
        raise GitError(f"invalid branch name {branch!r}")


@attr.s(frozen=True)
class GitResult:
    exit_code: int | None = attr.ib()
    signal: int | None = attr.ib()
    stdout: bytes = attr.ib()
    stderr: bytes = attr.ib()
    timed_out: bool = attr.ib()


class _GitProcessProtocol(protocol.ProcessProtocol):
    """Collects a git process's output, passes progress on, enforces the timeout."""

    def __init__(
        self,
        clock,
        timeout: float,
        kill_grace: float,
        on_progress: Callable[[str], None] | None,
        secrets: Sequence[str],
        signal_group: bool,
        stdout_limit: int | None = None,
        stdin: bytes | None = None,
    ):
        self._clock = clock
        self._stdin = stdin
        self._stdout_limit = stdout_limit
        self._signal_group = signal_group
        self._timeout = timeout
        self._kill_grace = kill_grace
        self._on_progress = on_progress
        self._secrets = secrets
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._stderr_partial = ""
        self._timed_out = False
        self._stopping = None
        self._last_progress_at = None
        self._pending_progress = None
        self._progress_timer = None
        self.ended = defer.Deferred(self._cancel)

    def connectionMade(self):
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()
        self._stopping = TermThenKill(self._clock, self._expire, self._timeout, self._kill_grace)

    def outReceived(self, data):
        if self._stdout_limit is None:
            self._stdout += data
        elif len(self._stdout) < self._stdout_limit:
            # The rest is read and dropped: git must not block on a full pipe.
            self._stdout += data[: self._stdout_limit - len(self._stdout)]

    def errReceived(self, data):
        self._stderr += data
        if len(self._stderr) > _STDERR_KEPT:
            del self._stderr[:-_STDERR_KEPT]
        if self._on_progress is not None:
            self._parse_progress(data.decode("utf-8", "replace"))

    def processEnded(self, reason):
        if self._stopping is not None:
            self._stopping.cancel()
        if self._progress_timer is not None and self._progress_timer.active():
            self._progress_timer.cancel()
        self._progress_timer = None
        if self.ended.called:
            return
        self.ended.callback(
            GitResult(
                exit_code=getattr(reason.value, "exitCode", None),
                signal=getattr(reason.value, "signal", None),
                stdout=bytes(self._stdout),
                stderr=bytes(self._stderr),
                timed_out=self._timed_out,
            )
        )

    def _parse_progress(self, text: str) -> None:
        segments = _LINE_BREAK.split(self._stderr_partial + text)
        self._stderr_partial = segments.pop()
        complete = [segment.strip() for segment in segments if segment.strip()]
        if not complete:
            return
        self._pending_progress = redact(complete[-1], self._secrets)
        now = self._clock.seconds()
        due = now if self._last_progress_at is None else self._last_progress_at + PROGRESS_INTERVAL
        if now >= due:
            self._report_progress()
        elif self._progress_timer is None:
            self._progress_timer = self._clock.callLater(due - now, self._report_progress)

    def _report_progress(self) -> None:
        self._progress_timer = None
        text, self._pending_progress = self._pending_progress, None
        if text is None:
            return
        self._last_progress_at = self._clock.seconds()
        log.debug("git progress: {text}", text=text)
        try:
            self._on_progress(text)
        except Exception:
            log.failure("git progress callback failed")

    def _expire(self, name: str) -> None:
        self._timed_out = True
        self._signal(name)

    def _cancel(self, _deferred) -> None:
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        if self._signal_group:
            # The group outlives git itself while a helper it started still runs.
            signal_group(self.transport.pid, name, self._signal_git)
        else:
            self._signal_git(name)

    def _signal_git(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


class Git:
    """
    Runs git commands through ``reactor`` (an IReactorProcess and IReactorTime).

    ``env`` is the base environment of every git process (default: this
    process's environment); variables that would redirect git to another
    repository are dropped from it.  ``clone_timeout`` bounds a clone,
    ``timeout`` every other command; a command still running then gets SIGTERM,
    and SIGKILL ``kill_grace`` seconds later.  With ``process_group`` (the
    default; off only for fake reactors) each git runs in a process group of its
    own and signals reach its helpers too.
    """

    def __init__(
        self,
        reactor,
        git: str = "git",
        env: Mapping[str, str] | None = None,
        clone_timeout: float = CLONE_TIMEOUT,
        timeout: float = COMMAND_TIMEOUT,
        kill_grace: float = KILL_GRACE,
        process_group: bool = True,
    ):
        self._reactor = reactor
        self._git = git
        self._process_group = process_group
        base = dict(os.environ if env is None else env)
        self._env = {
            name: value
            for name, value in base.items()
            if name not in _INHERITED_GIT_VARIABLES and not name.startswith(_INHERITED_GIT_PREFIXES)
        }
        self._env.update(_NON_INTERACTIVE)
        self.clone_timeout = clone_timeout
        self.timeout = timeout
        self._kill_grace = kill_grace

    # -- running ---------------------------------------------------------

    async def _spawn(
        self,
        args: Sequence[str],
        timeout: float | None = None,
        extra_env: Mapping[str, str] | None = None,
        on_progress: Callable[[str], None] | None = None,
        secrets: Sequence[str] = (),
        stdout_limit: int | None = None,
        stdin: bytes | None = None,
        confine: Confine | None = None,
    ) -> GitResult:
        timeout = self.timeout if timeout is None else timeout
        env = dict(self._env)
        if extra_env:
            env.update(extra_env)
        command = redact(" ".join(args), secrets)
        program = [self._git]
        if confine is not None:
            # The same git, started by a sandbox with an environment of its choosing.
            program, env = confine(self._git, env)
        process = _GitProcessProtocol(
            self._reactor,
            timeout,
            self._kill_grace,
            on_progress,
            secrets,
            self._process_group,
            stdout_limit,
            stdin,
        )
        if self._process_group:
            executable = sys.executable
            argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, *program, *args]
        else:
            executable = program[0]
            argv = [*program, *args]
        started = self._reactor.seconds()
        try:
            self._reactor.spawnProcess(
                process, executable, argv, env=env, childFDs={0: "w", 1: "r", 2: "r"}
            )
        except OSError as e:
            raise GitError(f"could not run {self._git}: {e.strerror or e}") from None
        result = await process.ended
        log.debug(
            "git {command} ended exit={exit_code} signal={signal} in {duration:.2f}s",
            command=command,
            exit_code=result.exit_code,
            signal=result.signal,
            duration=self._reactor.seconds() - started,
        )
        return result

    async def _run(
        self,
        args: Sequence[str],
        timeout: float | None = None,
        extra_env: Mapping[str, str] | None = None,
        on_progress: Callable[[str], None] | None = None,
        secrets: Sequence[str] = (),
        what: str | None = None,
    ) -> str:
        """Run git; its stdout on success, else a GitError with its stderr."""
        timeout = self.timeout if timeout is None else timeout
        result = await self._spawn(args, timeout, extra_env, on_progress, secrets)
        if result.exit_code == 0 and not result.timed_out:
            return result.stdout.decode("utf-8", "replace")
        raise self._error(
            result, what or f"git {args[2] if args[0] == '-C' else args[0]}", timeout, secrets
        )

    @_deferred
    async def run(
        self,
        repo: str,
        args: Sequence[str],
        what: str,
        extra_env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_progress: Callable[[str], None] | None = None,
        token: str | None = None,
        token_url: str | None = None,
        exit_codes: Sequence[int] = (0,),
        stdout_limit: int | None = None,
        stdin: bytes | None = None,
        confine: Confine | None = None,
    ) -> tuple[int, bytes]:
        """
        ``git -C repo args``: ``(exit code, stdout)`` for an exit in ``exit_codes``,
        else a GitError with git's stderr.  ``token`` (for ``token_url``'s origin) is
        given to this one process through its environment, as :meth:`clone` does.
        Only the first ``stdout_limit`` bytes of stdout are kept, when given; ``stdin``
        is written to git's standard input.  ``confine`` (see ``common.processes.Confine``) starts
        git inside a sandbox.
        """
        secrets = _secrets_of(token)
        env = dict(extra_env or {})
        if token and token_url:
            env.update(token_environment(token_url, token))
        timeout = self.timeout if timeout is None else timeout
        result = await self._spawn(
            ["-C", repo, *args], timeout, env, on_progress, secrets, stdout_limit, stdin, confine
        )
        if result.exit_code in exit_codes and not result.timed_out:
            return result.exit_code, result.stdout
        raise self._error(result, what, timeout, secrets)

    @staticmethod
    def _error(result: GitResult, what: str, timeout: float, secrets: Sequence[str]) -> GitError:
        detail = redact(summarize_stderr(result.stderr), secrets)
        if result.timed_out:
            message = f"{what} timed out after {timeout:g} s"
        elif result.exit_code is None:
            message = f"{what} was killed (signal {result.signal})"
        else:
            message = f"{what} failed (exit {result.exit_code})"
        return GitError(f"{message}: {detail}" if detail else message)

    # -- repositories ----------------------------------------------------

    @_deferred
    async def is_repository_root(self, path: str) -> bool:
        """
        Whether ``path`` is a bare repository or the top of a work tree.

        A GitError when git cannot tell (say, it distrusts the directory's owner).
        """
        args = ["rev-parse", "--is-bare-repository", "--is-inside-git-dir", "--show-prefix"]
        result = await self._spawn(["-C", path, *args])
        if result.exit_code != 0 or result.timed_out:
            if not result.timed_out and b"not a git repository" in result.stderr:
                return False
            raise self._error(result, "git rev-parse", self.timeout, ())
        lines = result.stdout.decode("utf-8", "replace").split("\n")
        if len(lines) < 3:
            return False
        bare, inside_git_dir, prefix = lines[0], lines[1], lines[2]
        return bare == "true" or (inside_git_dir == "false" and prefix == "")

    @_deferred
    async def current_branch(self, repo: str) -> str | None:
        """The branch HEAD points at, or None when HEAD is detached."""
        result = await self._spawn(["-C", repo, "symbolic-ref", "--quiet", "--short", "HEAD"])
        if result.exit_code == 1 and not result.timed_out:
            return None
        if result.exit_code != 0 or result.timed_out:
            raise self._error(result, "git symbolic-ref", self.timeout, ())
        return result.stdout.decode("utf-8", "replace").strip()

    @_deferred
    async def branch_exists(self, repo: str, branch: str) -> bool:
        _check_branch_name(branch)
        result = await self._spawn(
            ["-C", repo, "show-ref", "--verify", "--quiet", f"refs/heads/{branch}"]
        )
        if result.exit_code in (0, 1) and not result.timed_out:
            return result.exit_code == 0
        raise self._error(result, "git show-ref", self.timeout, ())

    @_deferred
    async def branch_has_unmerged_commits(self, repo: str, branch: str, base: str) -> bool:
        """Whether ``branch`` holds commits that ``base`` does not."""
        _check_branch_name(branch)
        _check_branch_name(base)
        count = await self._run(
            ["-C", repo, "rev-list", "--count", f"refs/heads/{base}..refs/heads/{branch}", "--"]
        )
        return int(count.strip() or "0") > 0

    @_deferred
    async def delete_branch(self, repo: str, branch: str) -> None:
        _check_branch_name(branch)
        await self._run(["-C", repo, "branch", "-D", "--", branch])
        log.info("git: deleted branch {branch} in {repo}", branch=branch, repo=repo)

    @_deferred
    async def checkout_new_branch(self, repo: str, branch: str) -> None:
        """Create ``branch`` at HEAD and switch ``repo`` to it."""
        _check_branch_name(branch)
        await self._run(["-C", repo, "checkout", "--quiet", "-b", branch])

    # -- checkouts -------------------------------------------------------

    @_deferred
    async def worktree_remove(self, source_repo: str, dest: str) -> None:
        """Remove the worktree at ``dest`` (even with changes) and prune its entry."""
        try:
            await self._run(
                ["-C", source_repo, "worktree", "remove", "--force", "--", dest],
                what="git worktree remove",
            )
        except GitError:
            # Already gone from disk: pruning below drops git's record of it.
            if os.path.lexists(dest):
                raise
        await self._run(["-C", source_repo, "worktree", "prune"])
        log.info("git: removed worktree {dest} of {source}", dest=dest, source=source_repo)

    @_deferred
    async def clone(
        self,
        url: str,
        dest: str,
        branch: str,
        token: str | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        """
        ``git clone --branch <branch> --single-branch url dest``.

        ``token`` (if any) is given to this one process through its environment,
        for ``url``'s origin only.  ``on_progress(text)`` gets git's latest
        progress line at most every second.  On failure ``dest`` is removed
        unless it existed before.
        """
        _check_branch_name(branch)
        secrets = _secrets_of(token)
        extra_env = token_environment(url, token) if token else {}
        dest_existed = os.path.lexists(dest)
        started = self._reactor.seconds()
        log.info(
            "git: cloning {url} ({branch}) into {dest}",
            url=redact(url, secrets),
            branch=branch,
            dest=dest,
        )
        try:
            await self._run(
                ["clone", "--progress", f"--branch={branch}", "--single-branch", "--", url, dest],
                timeout=self.clone_timeout,
                extra_env=extra_env,
                on_progress=on_progress,
                secrets=secrets,
                what="git clone",
            )
        except BaseException:
            if not dest_existed:
                _remove_tree(dest)
            raise
        log.info(
            "git: cloned into {dest} in {duration:.2f}s",
            dest=dest,
            duration=self._reactor.seconds() - started,
        )


def _remove_tree(path: str) -> None:
    """Remove what a failed git command left at ``path`` (usually little or nothing)."""
    try:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)
    except OSError as e:
        log.warn("git: could not remove {path}: {error}", path=path, error=str(e))
