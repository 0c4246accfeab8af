"""
What a session lets its agent do without asking: the permission modes, rules and the
grants people give while answering (``allow_session``), and the decision for one call.

Modes: ``full`` runs everything; ``ask`` asks for every call; ``edits`` runs reads and
edits/writes inside the session's own working directory and asks for the rest;
``readonly`` runs reads and blocks everything else without asking; ``rules`` runs what
an allow rule matches, blocks what a deny rule matches and asks for the rest.

The session's rules (``permissionRules`` and answers ``allow_rule``) and grants apply in
every mode but ``full`` and ``readonly``: a deny rule blocks (deny wins over any allow),
an allow rule or grant runs the call, otherwise the mode decides. An allow never covers a
bash command that chains or substitutes other commands (``;``, ``&``, ``|``, backticks,
``$(``, redirections, newlines): ``git status; curl …`` is asked for even when
``git status*`` is allowed.
"""

from __future__ import annotations

import difflib
import enum
import fnmatch
import json
import os
import re

import attr

from piserver.common.errors import InvalidParams


class PermissionMode(enum.StrEnum):
    FULL = "full"
    ASK = "ask"
    EDITS = "edits"
    READONLY = "readonly"
    RULES = "rules"


class Verdict(enum.Enum):
    ALLOW = "allow"
    BLOCK = "block"
    ASK = "ask"


READ_TOOLS = frozenset({"read", "grep", "find", "ls"})
"""pi's built-in tools that only read."""

EDIT_TOOLS = frozenset({"edit", "write"})

# Shell syntax that runs, or feeds, another command than the one a rule names.
CHAINING = re.compile(r"[;&|`<>\n\r]|\$\(")

SUMMARY_LENGTH = 4000
MAX_RULES = 200
MAX_PATTERN = 500


@attr.frozen
class Rule:
    """``action`` (``allow``/``deny``) ``tool`` calls whose subject (the bash command, or
    the path) matches the glob ``pattern``."""

    tool: str
    pattern: str
    action: str

    def to_json(self) -> dict:
        return {"tool": self.tool, "pattern": self.pattern, "action": self.action}

    def matches(self, tool_name: str, subject: str) -> bool:
        return self.tool in (tool_name, "*") and fnmatch.fnmatchcase(subject, self.pattern)


def parse_mode(value: object, key: str = "permissionMode") -> PermissionMode:
    try:
        return PermissionMode(value)
    except ValueError:
        names = ", ".join(f'"{m}"' for m in PermissionMode)
        raise InvalidParams(f'"{key}" must be one of {names}') from None


def parse_rules(value: object, key: str = "permissionRules") -> list[Rule]:
    """``[{tool, pattern, action}]`` as rules, in order; raises :class:`InvalidParams`."""
    if not isinstance(value, list) or len(value) > MAX_RULES:
        raise InvalidParams(f'"{key}" must be a list of at most {MAX_RULES} rules')
    rules = []
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            raise InvalidParams(f"{where} must be an object {{tool, pattern, action}}")
        tool, pattern, action = item.get("tool"), item.get("pattern"), item.get("action")
        if not isinstance(tool, str) or not tool or len(tool) > 64:
            raise InvalidParams(f"{where}.tool must be a tool name")
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
            raise InvalidParams(f"{where}.pattern must be a glob pattern")
        if action not in ("allow", "deny"):
            raise InvalidParams(f'{where}.action must be "allow" or "deny"')
        rules.append(Rule(tool=tool, pattern=pattern, action=action))
    return rules


def subject(tool_name: str, tool_input: dict) -> str:
    """What rules match for a call: the bash command, else the path, else ``""``."""
    if tool_name == "bash":
        command = tool_input.get("command")
        return command if isinstance(command, str) else ""
    path = tool_input.get("path")
    return path if isinstance(path, str) else ""


def command_prefix(command: str) -> str:
    """The prefix an ``allow_session`` of a bash call grants: the program and, when the
    second word is a plain word (a subcommand such as ``git status``), that word too."""
    words = command.split()
    if not words:
        return ""
    if len(words) > 1 and re.fullmatch(r"[A-Za-z0-9][\w.:-]*", words[1]):
        return f"{words[0]} {words[1]}"
    return words[0]


@attr.frozen
class Grant:
    """An ``allow_session``: the tool, and for bash the command prefix."""

    tool: str
    prefix: str | None = None

    def to_json(self) -> dict:
        return {"tool": self.tool, "prefix": self.prefix}

    def covers(self, tool_name: str, tool_input: dict) -> bool:
        if tool_name != self.tool:
            return False
        if self.prefix is None:
            return True
        words = subject(tool_name, tool_input).split()
        return words[: len(self.prefix.split())] == self.prefix.split()


def grant_for(tool_name: str, tool_input: dict) -> Grant:
    if tool_name == "bash":
        return Grant(tool="bash", prefix=command_prefix(subject(tool_name, tool_input)))
    return Grant(tool=tool_name)


def rule_for(tool_name: str, tool_input: dict) -> Rule:
    """The allow rule an ``allow_rule`` answer adds: the bash command prefix and anything
    after it, the exact path, or the whole tool."""
    if tool_name == "bash":
        return Rule(
            tool="bash",
            pattern=f"{command_prefix(subject(tool_name, tool_input))}*",
            action="allow",
        )
    path = subject(tool_name, tool_input)
    return Rule(tool=tool_name, pattern=path or "*", action="allow")


def parse_grants(value: object) -> list[Grant]:
    grants = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and isinstance(item.get("tool"), str):
            prefix = item.get("prefix")
            grants.append(
                Grant(tool=item["tool"], prefix=prefix if isinstance(prefix, str) else None)
            )
    return grants


@attr.s(eq=False)
class Permissions:
    """A session's mode, rules and grants, and the decision for each call."""

    mode: PermissionMode = attr.ib(default=PermissionMode.FULL)
    rules: list[Rule] = attr.ib(factory=list)
    grants: list[Grant] = attr.ib(factory=list)

    def decide(self, tool_name: str, tool_input: dict, cwd: str) -> tuple[Verdict, str | None]:
        """The verdict for one call and, for a block, the reason the model reads."""
        if self.mode is PermissionMode.FULL:
            return Verdict.ALLOW, None
        if tool_name in READ_TOOLS:
            if self.mode is not PermissionMode.ASK:
                return Verdict.ALLOW, None
        if self.mode is PermissionMode.READONLY:
            return Verdict.BLOCK, (
                f"this session is read-only: {tool_name} is not allowed (only reading files); "
                "do not retry it"
            )
        what = subject(tool_name, tool_input)
        for rule in self.rules:
            if rule.action == "deny" and rule.matches(tool_name, what):
                return Verdict.BLOCK, (
                    f"a rule of this session denies {tool_name} {rule.pattern!r}; do not retry it"
                )
        chained = tool_name == "bash" and CHAINING.search(what) is not None
        if not chained:
            if any(r.action == "allow" and r.matches(tool_name, what) for r in self.rules):
                return Verdict.ALLOW, None
            if any(grant.covers(tool_name, tool_input) for grant in self.grants):
                return Verdict.ALLOW, None
        if self.mode is PermissionMode.EDITS and tool_name in EDIT_TOOLS and inside(cwd, what):
            return Verdict.ALLOW, None
        return Verdict.ASK, None


def inside(directory: str, path: str) -> bool:
    """Whether ``path`` (relative to ``directory``, or absolute) lies inside ``directory``
    once symlinks are resolved (a checkout's symlink may point anywhere)."""
    if not path:
        return False
    root = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(root, os.path.expanduser(path)))
    return os.path.commonpath([root, target]) == root and target != root


def summary(tool_name: str, tool_input: dict) -> str:
    """A readable line or diff of what the call would do."""
    if tool_name == "bash":
        text = subject(tool_name, tool_input)
    elif tool_name == "write":
        content = tool_input.get("content")
        size = len(content.encode("utf-8", "replace")) if isinstance(content, str) else 0
        text = f"write {subject(tool_name, tool_input)} ({size} bytes)"
    elif tool_name == "edit":
        path = subject(tool_name, tool_input)
        edits = tool_input.get("edits")
        if not isinstance(edits, list):
            edits = [tool_input]
        lines = [f"edit {path}"]
        for edit in edits:
            if not isinstance(edit, dict):
                continue
            old, new = edit.get("oldText"), edit.get("newText")
            if isinstance(old, str) and isinstance(new, str):
                lines += difflib.unified_diff(
                    old.splitlines(), new.splitlines(), f"a/{path}", f"b/{path}", lineterm=""
                )
        text = "\n".join(lines)
    else:
        text = f"{tool_name} {json.dumps(tool_input, ensure_ascii=False)}"
    return text if len(text) <= SUMMARY_LENGTH else text[: SUMMARY_LENGTH - 1] + "…"
