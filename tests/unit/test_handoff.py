"""pi session files as untrusted input (pifiles), the importable listing, and the export."""

import io
import json
import os

import pytest
import pytest_twisted

from piserver.common.errors import GithubError, InvalidParams, InvalidSessionFile, NotFound
from piserver.sessioncli import run as session_cli
from piserver.sessions import pifiles
from piserver.sessions.export import desk_cwd
from piserver.sessions.importable import ImportableSessions
from piserver.sessions.imports import SessionImporter


def header(cwd="/home/u/project", **fields):
    return {"type": "session", "version": 3, "id": "s1", "timestamp": "t", "cwd": cwd, **fields}


def message(entry_id, role, content, parent=None):
    return {
        "type": "message",
        "id": entry_id,
        "parentId": parent,
        "timestamp": "t",
        "message": {"role": role, "content": content},
    }


def write(path, *entries, raw=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(e, separators=(",", ":")).encode() for e in entries] + list(raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def conversation(path, cwd="/home/u/project", prompt="fix the bug"):
    return write(
        path,
        header(cwd),
        message("a1", "user", [{"type": "text", "text": prompt}]),
        message("a2", "assistant", [{"type": "text", "text": "done"}], "a1"),
    )


def test_summary_reads_header_first_prompt_and_count(tmp_path, monkeypatch):
    path = conversation(tmp_path / "s.jsonl", prompt="  fix\n the   bug ")
    summary = pifiles.summarize(path)
    assert summary.header.cwd == "/home/u/project"
    assert summary.first_prompt == "fix the bug"
    assert summary.messages == 2 and summary.size == path.stat().st_size
    # Past the scanned start, messages are counted by their prefix, chunk by chunk (a
    # prefix cut in two by a chunk's end counts once), spaced JSON too.
    monkeypatch.setattr(pifiles, "SUMMARY_SCAN_BYTES", 1)
    monkeypatch.setattr(pifiles, "_CHUNK", 7)
    spaced = [json.dumps(message(f"m{n}", "user", "x")).encode() for n in range(3)]
    with path.open("ab") as f:
        f.write(b"\n".join(spaced) + b"\n")
    assert pifiles.summarize(path).messages == 5


def test_copy_refuses_malformed_files_and_leaves_nothing(tmp_path):
    target = tmp_path / "copy.jsonl"
    cases = {
        "not JSON": write(tmp_path / "a.jsonl", raw=[b"{nope"]),
        "not a pi session header": write(tmp_path / "b.jsonl", {"type": "message"}),
        "absolute path": write(tmp_path / "c.jsonl", header(cwd="relative")),
        "version 9": write(tmp_path / "d.jsonl", header(version=9), message("a", "user", "x")),
        "line 2 is not JSON": write(tmp_path / "e.jsonl", header(), raw=[b"[1,"]),
        'no valid entry "id"': write(
            tmp_path / "f.jsonl", header(), {"type": "message", "id": "../x", "message": {}}
        ),
        "without a role": write(tmp_path / "g.jsonl", header(), {"type": "message", "id": "a"}),
        "second session header": write(tmp_path / "h.jsonl", header(), header()),
        "holds no conversation": write(tmp_path / "i.jsonl", header()),
    }
    for problem, path in cases.items():
        with pytest.raises(InvalidSessionFile) as refused:
            pifiles.copy_validated(path, target, pifiles.Limits())
        assert problem in refused.value.message, (problem, refused.value.message)
        assert not target.exists()
    big = conversation(tmp_path / "big.jsonl")
    with pytest.raises(InvalidSessionFile, match="over the import limit"):
        pifiles.copy_validated(big, target, pifiles.Limits(max_bytes=100))
    longest_header = len(big.read_bytes().split(b"\n")[0]) + 1
    with pytest.raises(InvalidSessionFile, match="line 2 is longer than"):
        pifiles.copy_validated(big, target, pifiles.Limits(max_line=longest_header))
    assert not target.exists()


def test_copy_and_header_rewrite(tmp_path):
    source = conversation(tmp_path / "s.jsonl")
    staged = tmp_path / "staged.jsonl"
    assert pifiles.copy_validated(source, staged, pifiles.Limits()).cwd == "/home/u/project"
    final = tmp_path / "final.jsonl"
    pifiles.with_header(staged, final, cwd="/srv/session/repo")
    lines = final.read_bytes().splitlines()
    assert json.loads(lines[0])["cwd"] == "/srv/session/repo"
    assert lines[1:] == source.read_bytes().splitlines()[1:]


def test_symlinks_are_neither_listed_nor_opened(tmp_path):
    outside = conversation(tmp_path / "outside.jsonl")
    root = tmp_path / "sessions"
    conversation(root / "--home-u-project--" / "one.jsonl")
    (root / "--home-u-project--" / "link.jsonl").symlink_to(outside)
    (root / "--linked--").symlink_to(tmp_path)
    listing = ImportableSessions([root])
    assert [c.path.name for c in listing.candidates()] == ["one.jsonl"]
    with pytest.raises(OSError):
        pifiles.open_regular(root / "--home-u-project--" / "link.jsonl")


def test_pages_newest_first_with_an_opaque_cursor(tmp_path):
    root = tmp_path / "sessions"
    for n in range(5):
        path = conversation(root / "--p--" / f"{n}.jsonl", prompt=f"prompt {n}")
        os.utime(path, (1000 + n, 1000 + n))
    write(root / "--p--" / "junk.jsonl", raw=[b"not a session"])
    listing = ImportableSessions([root], page_size=2)
    prompts, cursor = [], None
    while True:
        page = listing.page(cursor)
        prompts += [s["firstPrompt"] for s in page["sessions"]]
        cursor = page.get("next")
        if cursor is None:
            break
    assert prompts == [f"prompt {n}" for n in (4, 3, 2, 1, 0)]
    first = listing.page(None)["sessions"][0]
    assert listing.resolve(first["importId"]).name == "4.jsonl"
    assert first["lastActivityAt"] == "1970-01-01T00:16:44Z"
    with pytest.raises(NotFound):
        listing.resolve(str(root / "--p--" / "4.jsonl"))
    with pytest.raises(NotFound):
        ImportableSessions([root]).resolve(first["importId"])  # another key: another id
    with pytest.raises(InvalidParams):
        listing.page("../../etc")


def test_export_gives_a_new_id_and_the_desk_cwd(tmp_path):
    source = conversation(tmp_path / "pi" / "s.jsonl", cwd="/srv/sessions/x/repo")
    name, content = pifiles.exported(source, "/home/u/project", 0.0, 1 << 20)
    first, *rest = content.splitlines()
    exported_header = json.loads(first)
    assert exported_header["cwd"] == "/home/u/project" and exported_header["id"] != "s1"
    assert name == f"1970-01-01T00-00-00-000Z_{exported_header['id']}.jsonl"
    assert rest == source.read_bytes().splitlines()[1:]
    assert desk_cwd({"importedCwd": "/a", "worktreePath": "/w"}) == "/a"
    assert desk_cwd({"repoSource": "local", "repoPath": "/r", "worktreePath": "/w"}) == "/r"
    assert desk_cwd({"worktreePath": "/w"}) == "/w"
    assert pifiles.encode_cwd("/home/u/my:proj") == "--home-u-my-proj--"


def test_cli_refuses_what_is_not_a_session_id(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    assert session_cli(["--data-dir", str(tmp_path), "export", "../x"], {}, lambda: 0, out, err)
    assert "not a session id" in err.getvalue() and out.getvalue() == ""
    missing = "12345678-1234-1234-1234-123456789abc"
    assert session_cli(["--data-dir", str(tmp_path), "export", missing], {}, lambda: 0, out, err)
    assert f"no session {missing}" in err.getvalue()


class FakeRepos:
    def __init__(self, repos=(), error=None):
        self._repos, self._error = list(repos), error

    async def list(self):
        if self._error is not None:
            raise self._error
        return {"repos": self._repos, "warnings": []}


class FakeGit:
    async def current_branch(self, path):
        return {"/src/outer/inner": "feature"}.get(path)


def importer(repos):
    return SessionImporter(None, "/nowhere", None, None, repos, FakeGit(), None)


@pytest_twisted.ensureDeferred
async def test_the_innermost_local_repository_holding_the_cwd_on_its_current_branch():
    outer = {"id": "o", "name": "O", "path": "/src/outer", "defaultBranch": "main"}
    inner = {"id": "i", "name": "I", "path": "/src/outer/inner", "defaultBranch": "main"}
    remote = {"id": "me/x", "path": "/src/outer/inner/deeper", "source": "github"}
    repos = FakeRepos([{**outer, "source": "local"}, {**inner, "source": "local"}, remote])
    found = await importer(repos)._repo_of("/src/outer/inner/pkg")
    assert (found["id"], found["defaultBranch"]) == ("i", "feature")
    found = await importer(repos)._repo_of("/src/outer")
    assert (found["id"], found["defaultBranch"]) == ("o", "main")
    assert await importer(repos)._repo_of("/src/outerwear") is None
    assert await importer(FakeRepos(error=GithubError("down")))._repo_of("/src/outer") is None
    assert await importer(None)._repo_of("/src/outer") is None
