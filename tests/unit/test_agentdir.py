"""A session's own agent dir: its settings.json, links to pi's files, none to the server's."""

import json

from piserver.agents import agentdir


def test_a_session_gets_pi_files_and_its_own_settings(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in (
        "auth.json",
        "models.json",
        "server-token",
        "device-tokens.json",
        ".env",
        "state.json",
        "state.json.corrupt-1",
        "repos.json",
    ):
        (data / name).write_text("{}")
    (data / "skills").mkdir()
    (data / "sessions").mkdir()
    (data / "settings.json").write_text(json.dumps({"defaultModel": "m"}))
    own = tmp_path / "session" / "agent"
    own.parent.mkdir()

    agentdir.prepare(data, own)

    assert sorted(p.name for p in own.iterdir()) == [
        "auth.json",
        "models.json",
        "settings.json",
        "skills",
    ]
    assert (own / "auth.json").resolve() == data / "auth.json"
    assert not (own / "settings.json").is_symlink()
    # pi writes the session's settings; the data dir's stay as they were.
    (own / "settings.json").write_text(json.dumps({"defaultModel": "other"}))
    (data / "auth.json").unlink()
    (data / "prompts").mkdir()
    agentdir.prepare(data, own)
    assert json.loads((own / "settings.json").read_text()) == {"defaultModel": "other"}
    assert json.loads((data / "settings.json").read_text()) == {"defaultModel": "m"}
    assert sorted(p.name for p in own.iterdir()) == [
        "models.json",
        "prompts",
        "settings.json",
        "skills",
    ]


def test_every_file_the_server_keeps_in_the_data_dir_stays_out_of_agent_dirs():
    # A new server file in the data dir is linked into every agent dir unless it is listed:
    # each module's own name for its file must be a server entry.
    from piserver.ops.audit import AUDIT_FILE
    from piserver.security.actionurls import KEY_FILE
    from piserver.security.pushsubscriptions import PUSH_SUBSCRIPTIONS_FILE
    from piserver.security.tokens import DEVICE_TOKENS_FILE, SERVER_TOKEN_FILE
    from piserver.security.vapid import VAPID_KEY_FILE
    from piserver.sessions.imports import STAGING
    from piserver.sessions.usage import USAGE_FILE
    from piserver.wire.idempotency import KEY_LOG

    for name in (
        AUDIT_FILE,
        f"{AUDIT_FILE}.1",
        KEY_FILE,
        DEVICE_TOKENS_FILE,
        SERVER_TOKEN_FILE,
        STAGING,
        USAGE_FILE,
        f"{USAGE_FILE}.3.log",
        KEY_LOG,
        VAPID_KEY_FILE,
        PUSH_SUBSCRIPTIONS_FILE,
    ):
        assert agentdir._is_server_entry(name), name


def test_a_link_the_agent_plants_is_never_written_through(tmp_path):
    """The agent removed its settings.json and made settings.json.tmp (the old temporary
    name) a link to a file of the server's: the next start writes a new copy, not there."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / agentdir.SETTINGS).write_text('{"defaultModel": "m"}')
    victim = tmp_path / "victim"
    victim.write_text("the server's")
    session_dir = tmp_path / "agent"
    agentdir.prepare(data_dir, session_dir)
    (session_dir / agentdir.SETTINGS).unlink()
    (session_dir / (agentdir.SETTINGS + ".tmp")).symlink_to(victim)
    agentdir.prepare(data_dir, session_dir)
    assert victim.read_text() == "the server's"
    assert (session_dir / agentdir.SETTINGS).read_text() == '{"defaultModel": "m"}'
    # A settings.json made a link is replaced by a copy, the link's target untouched.
    (session_dir / agentdir.SETTINGS).unlink()
    (session_dir / agentdir.SETTINGS).symlink_to(victim)
    agentdir.prepare(data_dir, session_dir)
    assert (
        not (session_dir / agentdir.SETTINGS).is_symlink() and victim.read_text() == "the server's"
    )
