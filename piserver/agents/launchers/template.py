"""
Agents behind a command prefix the operator gives (``--launcher-command``): the way
to run them in ``docker run -i``, ``podman run -i``, ``kubectl exec -i`` or over
``ssh``.  pi needs nothing but its stdin and stdout, which the prefix must pass on.

The template is split as a shell would and each word may name ``{cwd}`` (the agent's
working directory), ``{session}`` (the session id, or the models helper's key) and
``{uid}`` (the server's user id); ``{{`` and ``}}`` are literal braces.  The agent's
command line follows the prefix's last word.
"""

from __future__ import annotations

import os
import shlex
import shutil
import string

from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol

from piserver.agents.launchers import AgentLaunch

PLACEHOLDERS = frozenset({"cwd", "session", "uid"})


class BadTemplate(ValueError):
    """The launcher template cannot be used (the message says why)."""


def parse_template(template: str, path: str | None) -> tuple[str, ...]:
    """The template's words, checked: it must name a program found on ``path`` (or a
    path) and use only the known placeholders.  Raises BadTemplate."""
    try:
        words = shlex.split(template)
    except ValueError as e:
        raise BadTemplate(f"cannot split it: {e}") from None
    if not words:
        raise BadTemplate("it is empty")
    for word in words:
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(word) if field]
        except ValueError as e:
            raise BadTemplate(f"{word!r}: {e}") from None
        unknown = set(fields) - PLACEHOLDERS
        if unknown:
            raise BadTemplate(
                f"{word!r}: unknown placeholder {{{sorted(unknown)[0]}}}; "
                "known are {cwd}, {session} and {uid}"
            )
    if "{" in words[0]:
        raise BadTemplate("its first word, the program, cannot be a placeholder")
    program = shutil.which(os.path.expanduser(words[0]), path=path)
    if program is None:
        raise BadTemplate(f"{words[0]!r} not found")
    return (program, *words[1:])


class CommandTemplateLauncher:
    """Starts each agent as ``prefix... argv``, the prefix's placeholders filled in."""

    description = "command template"

    def __init__(self, reactor, words: tuple[str, ...], uid: int | None = None) -> None:
        self._reactor = reactor
        self._words = words
        self._uid = os.getuid() if uid is None else uid

    def argv(self, launch: AgentLaunch) -> list[str]:
        values = {"cwd": launch.cwd, "session": launch.key, "uid": str(self._uid)}
        prefix = [self._words[0], *(word.format_map(values) for word in self._words[1:])]
        return [*prefix, launch.executable, *launch.argv[1:]]

    def one_shot(self, files, cwd: str, writable) -> None:
        """The server's own git on a session's files runs unconfined here: the template
        may name a container without git or without the server's directories, so the
        server cannot know it could run there (docs/sandbox.md says so)."""
        return None

    def launch(self, protocol: ProcessProtocol, launch: AgentLaunch) -> IProcessTransport:
        return self._reactor.spawnProcess(
            protocol, self._words[0], self.argv(launch), env=dict(launch.env), path=launch.cwd
        )
