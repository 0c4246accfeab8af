"""sessions.agentfiles: what clone/fork copy and export_html reads, never through a link."""

import json
import os

import pytest

from piserver.common.errors import InvalidState
from piserver.sessions.agentfiles import copy_for_fork, read_export


@pytest.fixture
def dirs(tmp_path):
    made = {}
    for name in ("pi", "agent", "new-pi", "new-agent"):
        made[name] = tmp_path / name
        made[name].mkdir()
    (tmp_path / "server-token").write_text("TOKEN-SECRET")
    return made


def header(cwd="/old"):
    return json.dumps({"type": "session", "id": "x", "cwd": cwd, "version": 3}) + "\n"


def test_copies_regular_files_and_skips_links_and_fifos(dirs, tmp_path):
    (dirs["pi"] / "a.jsonl").write_text(header() + '{"type":"message"}\n')
    (dirs["pi"] / "b.jsonl").symlink_to(tmp_path / "server-token")
    os.mkfifo(dirs["pi"] / "c.jsonl")
    (dirs["agent"] / "settings.json").symlink_to(tmp_path / "server-token")
    copy_for_fork(dirs["pi"], dirs["agent"], dirs["new-pi"], dirs["new-agent"], "/new")
    assert sorted(os.listdir(dirs["new-pi"])) == ["a.jsonl"]
    lines = (dirs["new-pi"] / "a.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["cwd"] == "/new" and lines[1] == '{"type":"message"}'
    assert os.listdir(dirs["new-agent"]) == []


def test_copies_settings_when_regular(dirs):
    (dirs["agent"] / "settings.json").write_text('{"theme":"dark"}')
    copy_for_fork(dirs["pi"], dirs["agent"], dirs["new-pi"], dirs["new-agent"], "/new")
    assert (dirs["new-agent"] / "settings.json").read_text() == '{"theme":"dark"}'


def test_export_is_read_only_when_regular(dirs, tmp_path):
    (dirs["pi"] / "e.html").write_text("<html>")
    assert read_export(dirs["pi"], "e.html") == "<html>"
    with pytest.raises(InvalidState, match="larger"):
        read_export(dirs["pi"], "e.html", limit=3)
    (dirs["pi"] / "l.html").symlink_to(tmp_path / "server-token")
    with pytest.raises(InvalidState, match="symlink"):
        read_export(dirs["pi"], "l.html")
    os.mkfifo(dirs["pi"] / "f.html")
    with pytest.raises(InvalidState, match="not_regular"):
        read_export(dirs["pi"], "f.html")


def test_a_source_without_pi_or_agent_dir_copies_nothing(dirs, tmp_path):
    copy_for_fork(tmp_path / "none", tmp_path / "nothing", dirs["new-pi"], dirs["new-agent"], "/")
    assert os.listdir(dirs["new-pi"]) == [] and os.listdir(dirs["new-agent"]) == []


def test_many_conversations_are_bounded_together(dirs, monkeypatch):
    """Sparse files cost the agent nothing: the bound is for all of them, not each."""
    monkeypatch.setattr("piserver.sessions.agentfiles.MAX_CONVERSATION_BYTES", 1000)
    for name in ("a", "b", "c"):
        (dirs["pi"] / f"{name}.jsonl").write_text(header() + "x" * 400 + "\n")
    with pytest.raises(InvalidState, match="together"):
        copy_for_fork(dirs["pi"], dirs["agent"], dirs["new-pi"], dirs["new-agent"], "/new")
    # The one that did not fit is not left half-written.
    assert sorted(os.listdir(dirs["new-pi"])) == ["a.jsonl", "b.jsonl"]
