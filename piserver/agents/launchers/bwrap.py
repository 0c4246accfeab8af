"""
Agents inside a bubblewrap sandbox: each in its own mount (and pid) namespace that
shows the system read-only, its session's own directories read-write, and nothing
else of the data dir or the user's home.

The agent keeps the network (the model API needs it) and the server's uid.  A new
pid namespace means it sees no other process, and ``--die-with-parent`` ends it
with the server.  See docs/security.md for what it sees and what it does not.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol

from piserver.agents.launchers import AgentLaunch
from piserver.agents.launchers.caches import node_cache, session_jiti
from piserver.common import safefs
from piserver.common.processes import Confine, run_probe

# Top-level system directories shown read-only (or as the symlinks they are on merged-/usr
# systems).  /etc is shown too, without the files below.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Secrets of the machine in /etc, hidden even though the agent runs as the server's user.
HIDDEN_ETC_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers")
HIDDEN_ETC_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d")
# All a one-shot command keeps of the server's environment (besides GIT_* settings
# the server gives it, never a GIT_CONFIG_* one: that is how a token would travel).
ONE_SHOT_ENVIRONMENT = ("PATH", "LANG", "LC_ALL")
PROBE_TIMEOUT = 10.0


class BwrapUnusable(Exception):
    """bubblewrap is missing or cannot make a sandbox on this machine."""


def install_paths(pi_command: Sequence[str]) -> tuple[str, ...]:
    """The directories the agent command needs to run: for each word of it that is a
    file, the ``node_modules`` it lives in (pi's own dependencies are there), else its
    directory; for the file itself and for the file a symlink leads to."""
    found: list[str] = []
    for word in pi_command:
        if not os.path.isabs(word) or not os.path.exists(word):
            continue
        for path in (Path(word), Path(os.path.realpath(word))):
            parents = path.parents
            modules = next((p for p in parents if p.name == "node_modules"), None)
            directory = str(modules or path.parent)
            if directory not in found:
                found.append(directory)
    return tuple(found)


def system_args(home: str | None) -> list[str]:
    """bwrap options for the system part of every sandbox: read-only system, minimal
    /proc and /dev, a private /tmp and (empty) ``home``."""
    args = [
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--cap-drop",
        "ALL",
    ]
    for directory in SYSTEM_DIRS:
        if os.path.islink(directory):
            args += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
    for hidden in HIDDEN_ETC_FILES:
        if os.path.isfile(hidden):
            args += ["--ro-bind", "/dev/null", hidden]
    for hidden in HIDDEN_ETC_DIRS:
        if os.path.isdir(hidden):
            args += ["--tmpfs", hidden]
    resolv = os.path.realpath("/etc/resolv.conf")
    if not resolv.startswith("/etc/") and os.path.exists(resolv):
        # systemd-resolved and the like link it into /run.
        args += ["--ro-bind", resolv, resolv]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if home and os.path.abspath(home) not in ("/", "/tmp"):
        args += ["--tmpfs", os.path.abspath(home)]
    return args


def source_objects(repository: str) -> str | None:
    """The object store of the local repository at ``repository`` (a work tree's
    ``.git/objects``, or a bare repository's ``objects``), which its clones read."""
    for objects in (
        os.path.join(repository, ".git", "objects"),
        os.path.join(repository, "objects"),
    ):
        if os.path.isdir(objects):
            return objects
    return None


def git_binds(checkout: str, repository: str | None) -> list[tuple[str, str]]:
    """What a local session's checkout needs of its source ``repository``: for a clone
    (its ``.git`` a directory), the source's object store, read-only (the clone's
    alternate); nothing else of that repository is shown and nothing of it is writable.

    For a git worktree of ``repository`` made before clones (its ``.git`` a file naming
    its git dir in that repository): the repository's common git dir read-only, its own
    worktree metadata read-write, the other worktrees' hidden, and the files that tie
    the checkout to its metadata read-only (so that the agent cannot point them, or the
    server's own git runs there, elsewhere).  Its agent can no longer commit: objects
    and refs are the user's.  Nothing when the checkout's ``.git`` does not lead where
    git itself would have put it: the agent's files name what is shown only as far as
    the server can check them."""
    if repository is None:
        return []
    dot_git = os.path.join(checkout, ".git")
    if os.path.isdir(dot_git) and not os.path.islink(dot_git):
        objects = source_objects(repository)
        return [] if objects is None else [("ro", objects)]
    if not os.path.isfile(dot_git):
        return []
    # The agent may have written these files (a clone's agent owns its .git): read
    # without following a link, never a FIFO, a few KiB at most.
    try:
        first = safefs.read_small(dot_git).partition("\n")[0].strip()
        if not first.startswith("gitdir:"):
            return []
        gitdir = os.path.normpath(os.path.join(checkout, first.removeprefix("gitdir:").strip()))
        common = safefs.read_small(os.path.join(gitdir, "commondir")).strip()
        common = os.path.normpath(os.path.join(gitdir, common))
        back = os.path.normpath(safefs.read_small(os.path.join(gitdir, "gitdir")).strip())
    except (OSError, ValueError, safefs.Refused):
        return []
    known = {os.path.realpath(repository), os.path.realpath(os.path.join(repository, ".git"))}
    if (
        os.path.realpath(common) not in known
        or os.path.dirname(gitdir) != os.path.join(common, "worktrees")
        or os.path.realpath(back) != os.path.realpath(dot_git)
    ):
        return []
    return [
        ("ro", common),
        ("tmpfs", os.path.join(common, "worktrees")),
        ("rw", gitdir),
        ("ro", dot_git),
        ("ro", os.path.join(gitdir, "commondir")),
        ("ro", os.path.join(gitdir, "gitdir")),
    ]


def cache_args(files, cache: Path | None) -> list[str]:
    """pi compiles TypeScript extensions (the bundled one) with jiti, which keeps the
    result in ``$TMPDIR/jiti`` if it may write there: show it the session's own cache
    dir there (see launchers.caches)."""
    if files is None or files.cache is None:
        return []
    return ["--bind", session_jiti(cache, files.cache), "/tmp/jiti"]


def session_args(
    cwd: str, files, readable: Iterable[str], writable: Iterable[str] = ()
) -> list[str]:
    """bwrap options showing one agent its own files (``files``: launchers.SessionFiles,
    or None for an agent of no session: its working directory only), the read-only
    ``readable`` (the pi install...) and the further ``writable`` (a one-shot command's
    own directories)."""
    binds: list[tuple[str, str]] = [("ro", path) for path in readable]
    binds += [("rw", path) for path in writable]
    if files is None:
        binds.append(("rw", cwd))
    else:
        binds.append(("ro", files.directory))
        binds += [("rw", path) for path in files.writable]
        binds += [("ro", path) for path in files.readable]
        for path in files.writable:
            binds += git_binds(path, files.repository)
    # Parents before children, so a read-write directory inside a read-only one stays so.
    binds.sort(key=lambda bind: len(Path(bind[1]).parts))
    args = []
    for kind, path in binds:
        if kind == "tmpfs":
            args += ["--tmpfs", path]
        elif os.path.exists(path):
            flag = "--bind" if kind == "rw" else "--ro-bind"
            args += [flag, os.path.realpath(path), path]
    return [*args, "--chdir", cwd]


class BwrapLauncher:
    """Starts each agent as ``bwrap [sandbox options] -- argv``."""

    description = "bubblewrap sandbox"

    def __init__(
        self, reactor, bwrap: str, install: Iterable[str], cache: Path | None = None
    ) -> None:
        self._reactor = reactor
        self._bwrap = bwrap
        self._install = tuple(install)
        # What the agents would otherwise compile at every start (launchers.caches).
        self._cache = cache
        self._node_cache = node_cache(cache)

    def argv(self, launch: AgentLaunch) -> list[str]:
        cache = () if self._node_cache is None else (self._node_cache,)
        return [
            self._bwrap,
            *system_args(launch.env.get("HOME")),
            *cache_args(launch.files, self._cache),
            *session_args(launch.cwd, launch.files, (*self._install, *cache)),
            "--",
            launch.executable,
            *launch.argv[1:],
        ]

    def one_shot(self, files, cwd: str, writable: Sequence[str]) -> Confine:
        """A sandbox like the session agent's (its files, the install, read-only
        system), without the network, with ``writable`` writable too, and an environment
        of ``PATH``, the locale and the server's ``GIT_*`` settings only."""
        options = [
            *system_args(None),
            "--unshare-net",
            *session_args(cwd, files, self._install, writable),
        ]

        def confine(program: str, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
            kept = {
                name: value
                for name, value in env.items()
                if name in ONE_SHOT_ENVIRONMENT
                or (name.startswith("GIT_") and not name.startswith("GIT_CONFIG_"))
            }
            for name in ("GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL"):
                if name in env:
                    kept[name] = env[name]
            return [self._bwrap, *options, "--", program], kept

        return confine

    def launch(self, protocol: ProcessProtocol, launch: AgentLaunch) -> IProcessTransport:
        # The private /tmp is the agent's temporary directory, wherever the server's is.
        env = {**launch.env, "TMPDIR": "/tmp"}
        if self._node_cache is not None:
            env["NODE_COMPILE_CACHE"] = self._node_cache
        return self._reactor.spawnProcess(
            protocol, self._bwrap, self.argv(launch), env=env, path=launch.cwd
        )


def check_bwrap(bwrap: str, env: Mapping[str, str]) -> None:
    """Run a trivial command in a sandbox shaped like an agent's; raise BwrapUnusable
    saying why when bubblewrap is missing or fails here (no user namespaces...)."""
    argv = [bwrap, *system_args(env.get("HOME")), "--", "true"]
    try:
        done = run_probe(argv, env, PROBE_TIMEOUT)
    except FileNotFoundError:
        raise BwrapUnusable(f"{bwrap} not found (install the bubblewrap package)") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BwrapUnusable(f"{bwrap} could not run: {e}") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()[-500:]
        raise BwrapUnusable(f"{bwrap} failed (exit {done.returncode}): {message or 'no message'}")
