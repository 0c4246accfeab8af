"""
What a sandboxed agent would otherwise compile at every start.

Node.js keeps compiled code in its compile cache and pi's TypeScript loader (jiti)
keeps the compiled bundled extension in ``$TMPDIR/jiti``: both in the temporary
directory, which is new in every sandbox, and compiling them takes a cold agent
longer than everything else it does before it answers. So the server fills a cache
of its own once, by starting pi with the bundled extension outside any sandbox but
with nothing untrusted in reach (no session, no tools, no prompt, an empty working
and agent dir). Sandboxed agents read Node's part read-only, and each session gets a
copy of the compiled extension in a cache dir of its own, which it may rewrite: no
agent can plant code that another session's agent would run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

# The data dir's entry holding the caches.
COMPILE_CACHE = "node-compile-cache"
NODE = "node"
JITI = "jiti"
STAMP = "filled-for"
WARM_UP_TIMEOUT = 20.0


def stamp(pi_version: str, extension: Path) -> str:
    return f"pi {pi_version}, extension {hashlib.sha256(extension.read_bytes()).hexdigest()}\n"


def fill(
    cache: Path,
    pi_command: Sequence[str],
    env: Mapping[str, str],
    pi_version: str,
    extension: Path,
    tools_flag: str,
) -> None:
    """Make ``cache`` (its ``node/`` and ``jiti/``) hold what this pi and this extension
    compile to, unless it already does. Raises OSError or subprocess.SubprocessError when
    pi could not be run; a cache left unfilled only makes agents start slower."""
    wanted = stamp(pi_version, extension)
    try:
        if (cache / STAMP).read_text() == wanted:
            return
    except OSError:
        pass
    cache.mkdir(mode=0o700, exist_ok=True)
    (cache / NODE).mkdir(mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        empty = Path(scratch)
        (empty / "agent").mkdir()
        (empty / "cwd").mkdir()
        tools = empty / "tools.json"
        tools.write_text("[]")
        # Nothing of the server's environment but where programs are: no keys, no home.
        run_env = {
            "PATH": env.get("PATH", os.defpath),
            "HOME": str(empty / "cwd"),
            "NODE_COMPILE_CACHE": str(cache / NODE),
            "TMPDIR": str(cache),
            "PI_CODING_AGENT_DIR": str(empty / "agent"),
            "PI_OFFLINE": "1",
            "PI_SKIP_VERSION_CHECK": "1",
        }
        # pi loads its extensions, then reads its input: at once the end of it.
        subprocess.run(
            [
                *pi_command,
                "--mode",
                "rpc",
                "--no-session",
                "--no-tools",
                "-e",
                str(extension),
                f"--{tools_flag}={tools}",
            ],
            env=run_env,
            cwd=empty / "cwd",
            input=b"",
            capture_output=True,
            timeout=WARM_UP_TIMEOUT,
            check=False,
        )
    (cache / STAMP).write_text(wanted)


def node_cache(cache: Path | None) -> str | None:
    """Node's compile cache in ``cache``, if it has been filled."""
    if cache is None or not (cache / NODE).is_dir():
        return None
    return str(cache / NODE)


def session_jiti(cache: Path | None, session_cache: str) -> str:
    """The session's own jiti cache dir, made (with a copy of the compiled bundled
    extension from ``cache``) when it does not exist yet."""
    target = os.path.join(session_cache, JITI)
    if os.path.isdir(target):
        return target
    os.makedirs(session_cache, mode=0o700, exist_ok=True)
    source = None if cache is None else cache / JITI
    if source is not None and source.is_dir():
        shutil.copytree(source, target)
    else:
        os.mkdir(target, mode=0o700)
    return target
