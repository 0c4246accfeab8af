"""
Scoped device tokens on a real server (issue 27): a token limited to one repository
and one limited to its own sessions never see anyone else's session; a read-only token
is refused what changes something, naming the scope; a scripted run (create, prompt,
commit, push, pull request, delete at the GitHub stand-in) leaves one audit line per
change with the device's name and outcome and no secret; revoking a token still closes
its connection.
"""

import pytest
import pytest_twisted

from piserver.ops.audit import AUDIT_FILE, read_entries
from piserver.security.revocation import CLOSE_REVOKED
from piserver.security.scopes import Scope
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore
from tests.integration.test_workspace import agent_edits, event_after
from tests.support.fakegithub import TEST_TOKEN
from tests.support.server import TOKEN
from tests.support.wsclient import CallFailed


async def refused(call, code):
    with pytest.raises(CallFailed) as caught:
        await call
    assert caught.value.code == code
    return caught.value.message


def listed(result):
    return {s["sessionId"] for s in result["sessions"]}


@pytest_twisted.ensureDeferred
async def test_scopes_reach_and_the_audit_log(make_pi_server, fake_github, fake_llm):
    server = make_pi_server(
        "--github-api-url",
        fake_github.api_url,
        "--git-author",
        "Pi Bot <bot@example.invalid>",
        environ={"GITHUB_TOKEN": TEST_TOKEN},
    )
    fake_github.add_repo("octo/app", files={"README.md": "# app\n", "old.txt": "x\n"})
    fake_github.add_repo("octo/lib", files={"README.md": "# lib\n"})
    # Tokens added while the server runs, as `pi-server token add` would.
    store = DeviceTokenStore(server.agent_dir.path / DEVICE_TOKENS_FILE, clock=lambda: 0.0)
    dev_token = store.add("dev", repos=["octo/app"])
    own_token = store.add("own", own_sessions=True)
    watch_token = store.add("watch", {Scope.READ})

    admin = await server.client()
    lib = (await admin.call("session.create", {"mode": "code", "repoId": "octo/lib"}))["sessionId"]

    dev = await server.client(token=dev_token)
    hello = await dev.call("hello", {"client": {"name": "tests", "version": "1"}})
    assert hello["device"] == {
        "name": "dev",
        "scopes": ["read", "prompt", "approve", "ship", "manage"],
        "repos": ["octo/app"],
        "ownSessions": False,
    }
    assert [r["id"] for r in (await dev.call("repos.list"))["repos"]] == ["octo/app"]
    message = await refused(
        dev.call("session.create", {"mode": "code", "repoId": "octo/lib"}), "forbidden"
    )
    assert "octo/app" in message
    app = (await dev.call("session.create", {"mode": "code", "repoId": "octo/app"}))["sessionId"]
    fake_llm.script(*agent_edits())
    await dev.call("prompt", {"message": "tidy up"}, session_id=app)
    await event_after(dev, "files_changed", app)
    await dev.call("session.commit", {"message": "Tidy up"}, session_id=app)
    await dev.call("session.push", session_id=app)
    await dev.call("session.pull_request", {"title": "Tidy up"}, session_id=app)
    assert len(fake_github.pull_requests) == 1

    # Reach: the other repository's session is nowhere for dev.
    assert listed(await dev.call("session.list")) == {app}
    assert listed(await admin.call("session.list")) == {app, lib}
    await refused(dev.call("session.attach", {"sessionId": lib}), "not_found")
    await refused(dev.call("get_state", session_id=lib), "not_found")
    resumed = await server.client(token=dev_token, hello=False)
    answer = await resumed.call(
        "hello",
        {
            "client": {"name": "tests", "version": "1"},
            "resume": {"lastSeqBySession": {lib: 0, app: 0}},
        },
    )
    assert answer["resumed"][lib] == "not_found"
    assert answer["resumed"][app] in ("replayed", "snapshot")
    assert not dev.event_frames(lib) and not resumed.event_frames(lib)

    # An own-sessions token sees only what it created.
    own = await server.client(token=own_token)
    assert listed(await own.call("session.list")) == set()
    await refused(own.call("session.attach", {"sessionId": app}), "not_found")
    chat = (await own.call("session.create", {"mode": "chat"}))["sessionId"]
    assert listed(await own.call("session.list")) == {chat}

    # A read-only token watches, and is told which scope it lacks.
    watch = await server.client(token=watch_token)
    assert listed(await watch.call("session.list")) == {app, lib, chat}
    message = await refused(watch.call("prompt", {"message": "hi"}, session_id=app), "forbidden")
    assert message == "prompt needs the prompt scope; device watch has read"
    await refused(watch.call("session.delete", {"sessionId": app}), "forbidden")

    await dev.call("session.delete", {"sessionId": app})

    # One line per change, with the device and the outcome; reads leave none.
    entries = [e for e in read_entries(server.agent_dir.path / AUDIT_FILE)]
    assert [(e.device, e.method, e.session_id, e.repo_id, e.ok, e.error) for e in entries] == [
        (None, "session.create", lib, "octo/lib", True, None),
        ("dev", "session.create", None, "octo/lib", False, "forbidden"),
        ("dev", "session.create", app, "octo/app", True, None),
        ("dev", "prompt", app, "octo/app", True, None),
        ("dev", "session.commit", app, "octo/app", True, None),
        ("dev", "session.push", app, "octo/app", True, None),
        ("dev", "session.pull_request", app, "octo/app", True, None),
        ("own", "session.create", chat, None, True, None),
        ("watch", "prompt", app, "octo/app", False, "forbidden"),
        ("watch", "session.delete", app, "octo/app", False, "forbidden"),
        ("dev", "session.delete", app, "octo/app", True, None),
    ]
    text = (server.agent_dir.path / AUDIT_FILE).read_text()
    for secret in (TOKEN, TEST_TOKEN, dev_token, own_token, watch_token, "sha256:"):
        assert secret not in text

    # Revoking a token still closes its connections.
    assert store.revoke("watch")
    await watch.closed
    assert watch.close_code == CLOSE_REVOKED
