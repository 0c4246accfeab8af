"""
A code session's checkout whose ``.git`` an agent has turned hostile, for tests of
the git the server runs on it: a session record with just what
:mod:`piserver.repos.snapshot` and :mod:`piserver.repos.shipping` read, a one-entry
repository catalog, and the traps (filter driver, fsmonitor, hook, proxy, HEAD).
"""

import os
import stat
from pathlib import Path

import attr
from twisted.internet import defer, endpoints, protocol, threads

from piserver.repos.checkouts import CheckoutRecord, RepoSource
from tests.support.fakegithub import run_git


@attr.s(eq=False)
class CheckoutSession:
    """What the snapshot and shipping code read of a session."""

    id: str = attr.ib()
    directory: Path = attr.ib()
    checkout: object = attr.ib()
    deleted: bool = attr.ib(default=False)

    @property
    def cwd(self) -> Path:
        return self.directory / "repo"


def local_session(
    tmp_path: Path, source: str, branch: str = "pi/session-s1", local_clone: bool = True
) -> CheckoutSession:
    """Session ``s1`` of the local repository ``source`` (its directory made, its
    checkout not yet): a clone of it, or with ``local_clone=False`` a worktree of old."""
    session = CheckoutSession(
        "s1",
        tmp_path / "sessions" / "s1",
        CheckoutRecord(RepoSource.LOCAL, branch, "main", repo_path=source, local_clone=local_clone),
    )
    session.directory.mkdir(parents=True)
    return session


def in_thread(f, *args, **kwargs):
    """The server's ``in_thread``: file work in the reactor's thread pool."""
    return threads.deferToThread(f, *args, **kwargs)


class OneRepoCatalog:
    """A repository catalog that knows one GitHub repository."""

    def __init__(self, entry: dict):
        self._entry = entry

    def lookup(self, repo_id):
        return defer.succeed(self._entry)


class ProxyTrap(protocol.Factory):
    """A TCP listener that records whether anything connected (a proxy git must not use)."""

    def __init__(self):
        self.received = []

    def buildProtocol(self, addr):
        trap = self

        class _Recorder(protocol.Protocol):
            def dataReceived(self, data):
                trap.received.append(data)
                self.transport.loseConnection()

        return _Recorder()


async def listen_proxy_trap(reactor) -> tuple[ProxyTrap, object]:
    """A :class:`ProxyTrap` on a loopback port (``trap.port``) and its listening port."""
    trap = ProxyTrap()
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(trap)
    trap.port = port.getHost().port
    return trap, port


def plant_traps(checkout: str, marker_dir: str, proxy_port: int) -> None:
    """
    Make ``checkout``'s git config (the shared one for a worktree) hostile: each trap,
    if git runs it, creates a file in ``marker_dir`` named after it.
    """
    git_dir = run_git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=checkout)
    git_dir = git_dir.strip()

    def script(name):
        path = os.path.join(marker_dir, f"{name}.sh")
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\ntouch "{marker_dir}/{name}.ran"\ncat\n')
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
        return path

    proxy = f"http://127.0.0.1:{proxy_port}"
    for key, value in [
        ("filter.evil.clean", script("filter-clean")),
        ("filter.evil.smudge", script("filter-smudge")),
        ("filter.evil.required", "true"),
        ("diff.evil.textconv", script("textconv")),
        ("core.fsmonitor", script("fsmonitor")),
        ("http.proxy", proxy),
        ("http.http://127.0.0.1/.proxy", proxy),
        ("commit.gpgSign", "true"),
        ("gpg.program", script("gpg")),
    ]:
        run_git("config", key, value, cwd=checkout)
    hooks = os.path.join(git_dir, "hooks")
    os.makedirs(hooks, exist_ok=True)
    for hook in ("pre-commit", "commit-msg", "post-commit", "pre-push", "reference-transaction"):
        path = os.path.join(hooks, hook)
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\ntouch "{marker_dir}/{hook}.ran"\n')
        os.chmod(path, 0o755)
    with open(os.path.join(checkout, ".gitattributes"), "w") as f:
        f.write("* filter=evil diff=evil\n")


def ran(marker_dir: str) -> list[str]:
    """The traps that ran."""
    return sorted(name for name in os.listdir(marker_dir) if name.endswith(".ran"))
