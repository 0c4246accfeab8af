"""The web client at /ui in a real headless Chromium (Debian's, through Playwright) against a
real pi-server with the real pi agent and the scripted LLM.

One server, one scripted LLM and one browser serve the whole module (each test opens pages in
contexts of its own): the browser is the slow part. Screenshots go to ``test-screenshots/``
(git-ignored; ``$PI_SERVER_TEST_SCREENSHOTS`` elsewhere), with the page's load figures.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from piserver.security.scopes import Scope
from piserver.security.tokens import DEVICE_TOKENS_FILE, DeviceTokenStore
from piserver.sessions.pifiles import encode_cwd
from tests.support.browser import Browser
from tests.support.fakegithub import TEST_TOKEN, make_repository, run_git
from tests.support.fakellm import FakeLLM, Hang, Reply, Text, ToolCall
from tests.support.piagent import (
    VERSION_ONLY_PI,
    price_models,
    repository_root,
    spawn_pi,
    write_agent_dir,
)
from tests.support.processes import free_port, health_ok, wait_until
from tests.support.server import RunningServer
from tests.support.wsclient import CallFailed

DIALOGS_EXTENSION = repository_root() / "tests" / "support" / "extensions" / "dialogs.ts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
# Playwright's own waits (they poll the page): a safety net, not a synchronisation delay.
WAIT_MS = 30_000


def screenshot_dir() -> Path:
    path = Path(
        os.environ.get("PI_SERVER_TEST_SCREENSHOTS") or repository_root() / "test-screenshots"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest_twisted.async_yield_fixture(scope="module")
async def llm():
    fake = FakeLLM(reactor)
    await fake.start()
    yield fake
    await fake.stop()


@pytest_twisted.async_yield_fixture(scope="module")
async def server(llm, pi_binary, tmp_path_factory):
    agent_dir = write_agent_dir(tmp_path_factory.mktemp("webui"), llm.base_url)
    price_models(agent_dir)
    # A global pi extension: the `confirm_action` tool asks a confirm dialog.
    (agent_dir.path / "extensions").mkdir()
    shutil.copy(DIALOGS_EXTENSION, agent_dir.path / "extensions" / "dialogs.ts")
    logged = []
    observer = logged.append
    globalLogPublisher.addObserver(observer)
    # No --auth-token: the server makes one and logs the web client's link.
    running = RunningServer(
        agent_dir, pi_binary, ("--import-from", str(desk_sessions(agent_dir))), auth_token=None
    ).start()
    globalLogPublisher.removeObserver(observer)
    running.log_lines = [formatEvent(event) for event in logged]
    yield running
    await running.stop()


def desk_sessions(agent_dir) -> Path:
    """Where pi at the desk keeps its sessions for the server to import (--import-from)."""
    return agent_dir.path.parent / "desk-sessions"


@pytest.fixture(scope="module")
def browser():
    started = Browser.start()
    yield started
    started.stop()


@pytest.fixture
def script(llm):
    """Queues scripted replies; the test fails if it leaves some unused."""
    yield llm.script
    assert llm.unused_replies == 0


def link_from_log(server) -> str:
    (line,) = [line for line in server.log_lines if "/ui#token=" in line]
    return re.search(r"(http://\S+/ui#token=\S+)", line).group(1)


async def open_page(browser, url, **options):
    page = await browser.run(browser.new_page(**options))
    page.set_default_timeout(WAIT_MS)
    await browser.run(page.goto(url))
    return page


async def signed_in(browser, server, **options):
    page = await open_page(browser, link_from_log(server), **options)
    await browser.run(page.locator("html[data-ready=true]").wait_for(state="attached"))
    return page


async def new_chat(browser, page) -> str:
    await browser.run(page.click("#new-chat"))
    await browser.run(page.wait_for_url(re.compile(r"/ui/sessions/[^/]+$")))
    return page.url.rsplit("/", 1)[1]


async def send(browser, page, text):
    await browser.run(page.fill("#prompt", text))
    await browser.run(page.press("#prompt", "Enter"))


def last_answer(page):
    return page.locator(".message.assistant").last


async def wait_idle(browser, page):
    await browser.run(page.locator("#run-state[data-running=false]").wait_for(state="attached"))


def offer_repo(server, repo_id: str, name: str, path: str) -> None:
    """List the local repository ``path`` on ``server`` (its repos.json)."""
    (server.agent_dir.path / "repos.json").write_text(
        json.dumps({"repos": [{"id": repo_id, "name": name, "path": path}]})
    )


async def new_code_session(browser, page, repo_id: str) -> str:
    """Start a code session on ``repo_id`` from the page, wait for its page; its id."""
    await browser.run(page.select_option("#repo-select", repo_id))
    await browser.run(page.click("#new-code"))
    await browser.run(page.wait_for_url(re.compile(r"/ui/sessions/[^/]+$")))
    return page.url.rsplit("/", 1)[1]


@pytest_twisted.ensureDeferred
async def test_http_side_of_the_web_client(server):
    base = f"http://127.0.0.1:{server.port}"
    browser_root = await treq.get(
        base + "/", headers={"Accept": "text/html,*/*;q=0.8"}, allow_redirects=False
    )
    assert (browser_root.code, browser_root.headers.getRawHeaders("location")) == (302, ["/ui/"])
    json_root = await treq.get(base + "/", headers={"Accept": "application/json"})
    assert (await json_root.json())["endpoints"] == {"websocket": "/rpc", "health": "/health"}

    page = await treq.get(base + "/ui/sessions/any-id")
    html = await page.text()
    csp = page.headers.getRawHeaders("content-security-policy")[0]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    # Every script is a file of this origin: none inline.
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all(
        'src="/ui/assets/' in attrs and not body.strip() for attrs, body in scripts
    )
    app = await treq.get(base + "/ui/assets/app.js", headers={"Accept-Encoding": "gzip"})
    assert app.headers.getRawHeaders("content-type") == ["text/javascript; charset=utf-8"]
    assert app.headers.getRawHeaders("content-security-policy") == [csp]
    etag = app.headers.getRawHeaders("etag")[0]
    again = await treq.get(base + "/ui/assets/app.js", headers={"If-None-Match": etag})
    assert again.code == 304
    for missing in (
        "/ui/assets/nope.js",
        "/ui/assets/../tap.py",
        "/ui/assets/vendor/",
        "/ui/other",
    ):
        assert (await treq.get(base + missing)).code == 404, missing

    wrong = await treq.get(base + "/ui/auth", headers={"Authorization": "Bearer wrong-token"})
    right = await treq.get(base + "/ui/auth", headers={"Authorization": f"Bearer {server.token}"})
    assert (wrong.code, right.code) == (401, 200)
    link = link_from_log(server)
    assert link == f"http://127.0.0.1:{server.port}/ui#token={server.token}"


@pytest_twisted.ensureDeferred
async def test_sign_in_chat_tools_dialog_follow_up_abort_and_delete(browser, server, llm, script):
    base = f"http://127.0.0.1:{server.port}"
    page = await open_page(browser, base + "/ui#token=not-the-token", viewport=DESKTOP)
    error = page.locator("#sign-in-error")
    await browser.run(error.filter(has_text="wrong").wait_for())
    assert await browser.run(page.is_visible("#token"))

    # The logged link signs in; the token leaves the address bar for the browser's storage.
    await browser.run(page.goto(link_from_log(server)))
    await browser.run(page.locator("#connection[data-state=online]").wait_for())
    assert page.url == base + "/ui/"
    assert (
        await browser.run(page.evaluate("localStorage.getItem('pi-server.token')")) == server.token
    )
    session_id = await new_chat(browser, page)

    # Shift+Enter is a new line, Enter sends; the answer streams in as Markdown.
    script(Text("Here is **bold** text and code:\n\n```python\nprint('hi')\n```\n", delay=0.02))
    await browser.run(page.fill("#prompt", "first line"))
    await browser.run(page.press("#prompt", "Shift+Enter"))
    await browser.run(page.keyboard.type("second line"))
    await browser.run(page.press("#prompt", "Enter"))
    await browser.run(
        last_answer(page).locator("pre code").filter(has_text="print('hi')").wait_for()
    )
    assert await browser.run(last_answer(page).locator("strong").inner_text()) == "bold"
    user_text = await browser.run(page.locator(".message.user .user-text").first.inner_text())
    assert user_text == "first line\nsecond line"
    assert (await llm.wait_for_request(len(llm.requests)))["messages"][-1]["content"] in (
        "first line\nsecond line",
        [{"type": "text", "text": "first line\nsecond line"}],
    )
    await wait_idle(browser, page)

    # A tool call asks a confirm dialog; its output shows once the tool has run.
    script(
        Reply(ToolCall("confirm_action", {"question": "Delete the old logs?"})),
        Text("The logs are gone."),
    )
    await send(browser, page, "clean up")
    dialog = page.locator("dialog#dialog")
    await browser.run(dialog.filter(has_text="Delete the old logs?").wait_for())
    await browser.run(dialog.get_by_role("button", name="Yes").click())
    await browser.run(last_answer(page).filter(has_text="The logs are gone.").wait_for())
    tool = page.locator("details.tool").last
    assert await browser.run(tool.get_attribute("open")) is None  # collapsed by default
    await browser.run(tool.locator("summary").click())
    await browser.run(tool.locator(".tool-output").filter(has_text="confirmed").wait_for())
    assert "confirm_action" in await browser.run(tool.locator(".tool-name").inner_text())
    assert "Delete the old logs?" in await browser.run(tool.locator(".tool-input").inner_text())
    await browser.run(page.screenshot(path=str(screenshot_dir() / "desktop.png")))
    await wait_idle(browser, page)

    # While an answer streams, a follow-up is queued for after it.
    script(
        Reply(Text(" ".join(f"long{i}" for i in range(80)), delay=0.05)),
        Text("Follow-up answered."),
    )
    await send(browser, page, "write a lot")
    await browser.run(page.locator("#follow-up").click(trial=True))
    await browser.run(page.fill("#prompt", "and then?"))
    await browser.run(page.click("#follow-up"))
    await browser.run(last_answer(page).filter(has_text="Follow-up answered.").wait_for())
    assert await browser.run(page.locator(".message.user").last.inner_text()) == "and then?"
    await wait_idle(browser, page)

    # Enter while an answer streams steers it.
    script(
        Reply(Text(" ".join(f"more{i}" for i in range(80)), delay=0.05)),
        Text("Steered."),
    )
    await send(browser, page, "write more")
    await browser.run(page.locator("#send").filter(has_text="Steer").wait_for())
    await send(browser, page, "go left")
    await browser.run(last_answer(page).filter(has_text="Steered.").wait_for())
    steered = await llm.wait_for_request(len(llm.requests))
    assert "go left" in json.dumps(steered["messages"][-1])
    await wait_idle(browser, page)

    # A slow answer is stopped.
    script(Reply(Text("slow " * 50, delay=0.1), Hang()))
    await send(browser, page, "take your time")
    await browser.run(last_answer(page).filter(has_text="slow").wait_for())
    await browser.run(page.click("#abort"))
    await browser.run(last_answer(page).locator(".aborted").wait_for())
    assert await llm.wait_for_end(len(llm.requests)) == "client_disconnected"
    await wait_idle(browser, page)

    # The model can be picked, and the thinking level of a model that reasons.
    assert await browser.run(page.locator("#model").input_value()) == "fake/fake-1"
    assert not await browser.run(page.is_visible("#thinking"))
    await browser.run(page.select_option("#model", "fake/fake-2"))
    await browser.run(page.locator(".toast").filter(has_text="Model: fake-2").wait_for())
    # fake-2 reasons: the thinking levels pi offers for it can be picked.
    await browser.run(page.locator("#thinking option[value=high]").wait_for(state="attached"))
    await browser.run(page.select_option("#thinking", "high"))
    await browser.run(page.locator(".toast").filter(has_text="Thinking: high").wait_for())
    observer = await server.client()
    state = await observer.call("get_state", session_id=session_id)
    assert (state["model"]["id"], state["thinkingLevel"]) == ("fake-2", "high")

    # The session's own link (a bookmark) opens it with its history.
    other = await browser.run(page.context.new_page())
    await browser.run(other.goto(f"{base}/ui/sessions/{session_id}"))
    await browser.run(
        other.locator(".message.assistant").filter(has_text="The logs are gone.").wait_for()
    )
    await browser.run(
        other.locator(".message.assistant").filter(has_text="Follow-up answered.").wait_for()
    )
    assert await browser.run(other.locator(".message.user").count()) == 7
    await browser.run(other.close())

    # Deleting asks first.
    await browser.run(page.click("#delete"))
    await browser.run(dialog.get_by_role("button", name="Yes").click())
    await browser.run(page.wait_for_url(base + "/ui/"))
    sessions = (await observer.call("session.list"))["sessions"]
    assert session_id not in [s["sessionId"] for s in sessions]
    # The list is fetched again after the page has moved on: wait for it to drop the session.
    await browser.run(page.locator(f"[data-session-id='{session_id}']").wait_for(state="detached"))
    assert await browser.run(page.evaluate("window.__violations")) == []


@pytest_twisted.ensureDeferred
async def test_offline_mid_answer_shows_the_full_answer_once(browser, server, llm, script):
    page = await signed_in(browser, server, viewport=DESKTOP)
    session_id = await new_chat(browser, page)
    observer = await server.client()
    await observer.call("session.attach", {"sessionId": session_id, "exclusive": False})
    words = [f"w{i}" for i in range(60)]
    # Hang: no message_end ever comes, so what the page shows is built from deltas alone.
    script(Reply(Text(" ".join(words), delay=0.06), Hang()))
    await send(browser, page, "count")
    await browser.run(last_answer(page).filter(has_text="w3").wait_for())

    await browser.run(page.context.set_offline(True))
    await browser.run(page.locator("#connection[data-state=offline]").wait_for())
    shown_offline = await browser.run(last_answer(page).inner_text())
    await observer.wait_for_event(
        lambda f: (
            f["type"] == "message_update"
            and f["sessionId"] == session_id
            and f["payload"]["assistantMessageEvent"].get("delta", "").strip() == "w59"
        )
    )
    await browser.run(page.context.set_offline(False))
    await browser.run(page.locator("#connection[data-state=online]").wait_for())
    await browser.run(last_answer(page).filter(has_text="w59").wait_for())

    assert "w59" not in shown_offline
    assert await browser.run(page.locator(".message.assistant").count()) == 1
    assert (await browser.run(last_answer(page).inner_text())).split() == words
    await observer.call("abort", session_id=session_id)
    await browser.run(last_answer(page).locator(".aborted").wait_for())
    assert (await browser.run(last_answer(page).locator(".markdown").inner_text())).split() == words
    assert await browser.run(page.locator(".message.assistant").count()) == 1


@pytest_twisted.ensureDeferred
async def test_offline_prompts_wait_in_the_outbox_and_run_once_in_order(
    browser, server, llm, script
):
    page = await signed_in(browser, server, viewport=DESKTOP)
    session_id = await new_chat(browser, page)
    # While "blocked", the page's WebSockets to /rpc are closed as they open (the server
    # cannot be reached), though the page itself loads: a reload can happen meanwhile.
    blocked = {"now": True}

    async def rpc_socket(socket):
        if blocked["now"]:
            await socket.close()
        else:
            socket.connect_to_server()

    await browser.run(page.context.route_web_socket(re.compile(r"/rpc"), rpc_socket))
    await browser.run(page.context.set_offline(True))
    await browser.run(page.locator("#connection[data-state=offline]").wait_for())
    asked = len(llm.requests)
    await send(browser, page, "first, typed offline")
    await send(browser, page, "second, typed offline")
    waiting = page.locator(".outbox-item")
    texts = page.locator(".outbox-text")
    assert await browser.run(texts.all_inner_texts()) == [
        "first, typed offline",
        "second, typed offline",
    ]
    states = await browser.run(page.locator(".outbox-state").all_inner_texts())
    assert states == ["Waiting to send"] * 2

    # Back on the network but not yet at the server: a reload keeps them.
    await browser.run(page.context.set_offline(False))
    await browser.run(page.reload())
    await browser.run(waiting.nth(1).wait_for())
    assert await browser.run(texts.all_inner_texts()) == [
        "first, typed offline",
        "second, typed offline",
    ]
    assert len(llm.requests) == asked

    # The server is reachable again: each is sent once, in order, and runs once.
    script(Text("one"), Text("two"))
    blocked["now"] = False
    await browser.run(page.locator("#connection[data-state=online]").wait_for())
    await browser.run(waiting.first.wait_for(state="detached"))
    first = await llm.wait_for_request(asked + 1)
    second = await llm.wait_for_request(asked + 2)
    assert json.dumps(first["messages"][-1]).count("first, typed offline") == 1
    assert json.dumps(second["messages"][-1]).count("second, typed offline") == 1
    await browser.run(last_answer(page).filter(has_text="two").wait_for())
    await llm.wait_for_end(asked + 2)
    await wait_idle(browser, page)
    observer = await server.client()
    messages = (await observer.call("get_messages", session_id=session_id))["messages"]
    users = [json.dumps(m["content"]) for m in messages if m["role"] == "user"]
    assert len(users) == 2
    assert "first, typed offline" in users[0] and "second, typed offline" in users[1]
    assert len(llm.requests) == asked + 2
    assert await browser.run(page.evaluate("localStorage.getItem('pi-server.outbox')")) == "[]"
    assert await browser.run(page.evaluate("window.__violations")) == []


@pytest_twisted.ensureDeferred
async def test_hostile_answer_is_shown_inert(browser, server, script):
    # Signed in by pasting the token this time.
    page = await open_page(browser, f"http://127.0.0.1:{server.port}/", viewport=DESKTOP)
    await browser.run(page.fill("#token", server.token))
    await browser.run(page.click("#sign-in-form button[type=submit]"))
    await browser.run(page.locator("html[data-ready=true]").wait_for(state="attached"))
    assert page.url.endswith("/ui/")
    await new_chat(browser, page)
    script(
        Text(
            'Look: <img src=x onerror="window.__xss=1"> and [click me](javascript:window.__xss=2) '
            '<script>window.__xss=3</script><a href="javascript:window.__xss=4">raw</a> '
            '<svg onload="window.__xss=5"></svg> end.'
        )
    )
    await send(browser, page, "be evil")
    answer = last_answer(page)
    await browser.run(answer.filter(has_text="end.").wait_for())
    await wait_idle(browser, page)
    conversation = page.locator("#conversation")
    assert await browser.run(conversation.locator("[onerror], [onload], script").count()) == 0
    for name in ("click me", "raw"):
        link = answer.get_by_text(name)
        href = await browser.run(link.get_attribute("href"))
        assert href is None or not href.lower().startswith("javascript"), href
        await browser.run(link.click())
    assert await browser.run(page.evaluate("window.__xss")) is None
    # The CSP saw inline handlers only in the sanitizer's own inert parse of the answer
    # (Chromium reports those too), never in the page.
    violations = await browser.run(page.evaluate("window.__violations"))
    assert all("/vendor/purify.es.mjs" in violation for violation in violations), violations


@pytest_twisted.ensureDeferred
async def test_code_session_tools_and_its_changes_where_offered(browser, server, script, tmp_path):
    source = make_repository(str(tmp_path / "web"))
    offer_repo(server, "web", "Web app", source)
    page = await signed_in(browser, server, viewport=DESKTOP)
    session_id = await new_code_session(browser, page, "web")
    script(
        Reply(ToolCall("write", {"path": "notes.txt", "content": "remember the milk\n"})),
        Text("Noted."),
    )
    await send(browser, page, "take a note")
    await browser.run(last_answer(page).filter(has_text="Noted.").wait_for())
    tool = page.locator("details.tool").last
    assert await browser.run(tool.locator(".tool-name").inner_text()) == "write"
    assert "notes.txt" in await browser.run(tool.locator(".tool-output").text_content())
    await wait_idle(browser, page)

    observer = await server.client()
    try:
        await observer.call("session.diff", session_id=session_id)
    except CallFailed as refused:
        # A server without the git workflow: the page offers none of it.
        assert refused.code == "unknown_method"
        assert not await browser.run(page.is_visible("#changes"))
        return
    changes = page.locator("#changes")
    await browser.run(changes.filter(has_text="(1)").wait_for())
    await browser.run(changes.click())
    await browser.run(
        page.locator("#git-files .file.added").filter(has_text="notes.txt").wait_for()
    )
    assert "+remember the milk" in await browser.run(page.locator("#git-diff").inner_text())
    await browser.run(page.fill("#commit-message", "Take a note"))
    await browser.run(page.click("#commit-form button"))
    await browser.run(page.locator("#git-result").filter(has_text="Committed").wait_for())
    branch = f"pi/session-{session_id}"
    assert run_git("log", "-1", "--format=%s", branch, cwd=source).strip() == "Take a note"
    await browser.run(page.click("#push"))
    await browser.run(page.locator("#git-result").filter(has_text="no push").wait_for())
    await browser.run(page.screenshot(path=str(screenshot_dir() / "changes.png")))


@pytest_twisted.ensureDeferred
async def test_a_repositorys_own_pi_extension_loads_after_a_yes_in_the_dialog(
    browser, server, tmp_path
):
    # pi's project trust: the server asks while the code session is being created (before
    # the page has the session); the page shows the question once it opens the session.
    source = make_repository(
        str(tmp_path / "trusting"),
        files={
            "README.md": "# trusting\n",
            ".pi/extensions/x.ts": 'import { appendFileSync } from "node:fs";\n'
            "export default function () {\n"
            '    appendFileSync(process.cwd() + "/LOADED.txt", "loaded\\n");\n'
            "}\n",
        },
    )
    offer_repo(server, "trusting", "Trusting", source)
    page = await signed_in(browser, server, viewport=DESKTOP)
    session = server.sessions.sessions[await new_code_session(browser, page, "trusting")]
    dialog = page.locator("dialog#dialog")
    await browser.run(dialog.filter(has_text="Trust this project").wait_for())
    assert ".pi/extensions" in await browser.run(dialog.inner_text())
    assert not (session.cwd / "LOADED.txt").exists()
    observer = await server.client()
    await observer.call("session.attach", {"sessionId": session.id, "exclusive": False})
    await browser.run(dialog.get_by_role("button", name="Yes").click())
    await observer.wait_for_event(lambda f: f["type"] == "extension_ui_resolved")
    await observer.call("get_state", session_id=session.id)  # its restarted agent
    assert (session.cwd / "LOADED.txt").read_text() == "loaded\n"
    assert not await browser.run(dialog.is_visible())


@pytest_twisted.ensureDeferred
async def test_approval_card_allow_and_the_decision_after_a_reload(
    browser, server, script, tmp_path
):
    source = make_repository(str(tmp_path / "guarded"))
    offer_repo(server, "guarded", "Guarded", source)
    page = await signed_in(browser, server, viewport=PHONE)
    await browser.run(page.select_option("#new-permission", "ask"))
    session_id = await new_code_session(browser, page, "guarded")
    script(Reply(ToolCall("bash", {"command": "echo approved-by-click"})), Text("Ran it."))
    await send(browser, page, "run it")
    card = page.locator(".approval[data-state=pending]")
    await browser.run(card.locator(".approval-summary").filter(has_text="echo approved").wait_for())
    # (The list is behind the session on a phone: there, but not shown.)
    pending = page.locator(".session-pending").filter(has_text="1 waiting")
    await browser.run(pending.wait_for(state="attached"))
    assert await browser.run(page.locator("#permission").input_value()) == "ask"
    await browser.run(card.get_by_role("button", name="Allow", exact=True).click())
    await browser.run(last_answer(page).filter(has_text="Ran it.").wait_for())
    tool = page.locator("details.tool").last
    assert "approved-by-click" in await browser.run(tool.locator(".tool-output").text_content())
    await wait_idle(browser, page)

    await browser.run(page.reload())
    decided = page.locator(".approval[data-state=allowed] .approval-outcome")
    await browser.run(decided.filter(has_text="Allowed by server token").wait_for())
    assert await browser.run(page.locator(".approval .approval-buttons").count()) == 0
    await browser.run(page.screenshot(path=str(screenshot_dir() / "approval.png")))
    await browser.run(page.select_option("#permission", "full"))
    observer = await server.client()
    await browser.run(page.locator(".toast").filter(has_text="Full access").wait_for())
    sessions = (await observer.call("session.list"))["sessions"]
    (listed,) = [s for s in sessions if s["sessionId"] == session_id]
    assert (listed["permissionMode"], listed["pendingApprovals"]) == ("full", 0)


@pytest_twisted.ensureDeferred
async def test_github_session_commit_push_and_pull_request(
    browser, make_pi_server, fake_github, fake_llm
):
    # A server of its own: one that lists GitHub repositories (the stand-in).
    github_server = make_pi_server(
        "--github-api-url", fake_github.api_url, environ={"GITHUB_TOKEN": TEST_TOKEN}
    )
    repo = fake_github.add_repo("octo/app", files={"README.md": "# app\n"})
    base = f"http://127.0.0.1:{github_server.port}"
    page = await open_page(browser, f"{base}/ui#token={github_server.token}", viewport=DESKTOP)
    await browser.run(page.locator("html[data-ready=true]").wait_for(state="attached"))
    session_id = await new_code_session(browser, page, "octo/app")
    branch = f"pi/session-{session_id}"
    fake_llm.script(
        Reply(ToolCall("write", {"path": "hello.txt", "content": "hello\n"})),
        Text("Wrote hello.txt."),
    )
    await send(browser, page, "say hello in a file")
    await browser.run(last_answer(page).filter(has_text="Wrote hello.txt.").wait_for())
    changes = page.locator("#changes")
    await browser.run(changes.filter(has_text="(1)").wait_for())
    await browser.run(changes.click())
    await browser.run(page.fill("#commit-message", "Say hello"))
    await browser.run(page.click("#commit-form button"))
    result = page.locator("#git-result")
    await browser.run(result.filter(has_text="Committed").wait_for())
    await browser.run(page.click("#push"))
    await browser.run(result.filter(has_text=f"Pushed {branch} to octo/app").wait_for())
    assert run_git("log", "-1", "--format=%s", branch, cwd=repo.bare_path).strip() == "Say hello"

    await browser.run(page.fill("#pr-title", "Say hello"))
    await browser.run(page.fill("#pr-body", "Made in the web client"))
    await browser.run(page.check("#pr-draft"))
    await browser.run(page.click("#pr-form button"))
    link = result.get_by_role("link", name="Pull request #1")
    await browser.run(link.wait_for())
    assert await browser.run(link.get_attribute("href")) == (
        "https://github.example/octo/app/pull/1"
    )
    (opened,) = fake_github.pull_requests
    assert opened.fields == {
        "title": "Say hello",
        "head": branch,
        "base": "main",
        "body": "Made in the web client",
        "draft": True,
    }
    await browser.run(page.screenshot(path=str(screenshot_dir() / "pull-request.png")))


@pytest_twisted.ensureDeferred
async def test_phone_viewport(browser, server, script):
    page = await signed_in(
        browser, server, viewport=PHONE, is_mobile=True, has_touch=True, color_scheme="dark"
    )
    load = await browser.run(
        page.evaluate("""() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const resources = performance.getEntriesByType('resource');
        const interactive = performance.getEntriesByName('pi-interactive')[0];
        return {
            transferBytes: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
            decodedBytes: nav.decodedBodySize
                + resources.reduce((n, r) => n + r.decodedBodySize, 0),
            files: resources.length + 1,
            interactiveMs: Math.round(interactive.startTime),
            domContentLoadedMs: Math.round(nav.domContentLoadedEventEnd),
        };
    }""")
    )
    (screenshot_dir() / "load.json").write_text(json.dumps(load, indent=2) + "\n")
    assert await browser.run(page.is_visible("#new-chat"))
    await new_chat(browser, page)
    script(Text("A short answer that fits on a phone screen, with `code` in it."))
    await send(browser, page, "hello from the phone")
    answer = last_answer(page)
    await browser.run(answer.filter(has_text="fits on a phone").wait_for())
    await wait_idle(browser, page)
    for selector in ("#prompt", "#send", ".message.assistant"):
        box = await browser.run(page.locator(selector).last.bounding_box())
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (selector, box)
        assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], (selector, box)
    # Nothing is wider than the screen.
    assert (
        await browser.run(page.evaluate("document.documentElement.scrollWidth")) <= PHONE["width"]
    )
    await browser.run(page.screenshot(path=str(screenshot_dir() / "phone.png")))

    # The other kinds of extension dialog (the test extension's /dialog command).
    dialog = page.locator("dialog#dialog")
    await send(browser, page, "/dialog select")
    await browser.run(dialog.get_by_role("button", name="green").click())
    await browser.run(page.locator(".toast").filter(has_text='select answered "green"').wait_for())
    await send(browser, page, "/dialog input")
    await browser.run(dialog.locator("input").fill("Ada"))
    await browser.run(dialog.get_by_role("button", name="OK").click())
    await browser.run(page.locator(".toast").filter(has_text='input answered "Ada"').wait_for())
    await send(browser, page, "/dialog editor")
    editor = dialog.locator("textarea")
    assert await browser.run(editor.input_value()) == "line 1\nline 2"
    await browser.run(editor.fill("edited"))
    await browser.run(dialog.get_by_role("button", name="OK").click())
    await browser.run(page.locator(".toast").filter(has_text='editor answered "edited"').wait_for())
    await browser.run(page.click("#back"))
    await browser.run(page.locator("#new-chat").wait_for())


@pytest_twisted.ensureDeferred
async def test_cost_and_budget_stop(browser, server, script):
    page = await signed_in(browser, server, viewport=DESKTOP)
    session_id = await new_chat(browser, page)
    client = await server.client()
    await client.call("session.set_budget", {"sessionId": session_id, "budgetUsd": 0.01})

    # The run's first message spends the budget: the stop is shown, with the cost.
    script(Text("An answer that costs more than the budget."))
    await send(browser, page, "spend it")
    notice = page.locator("#budget-notice[data-kind=reached]")
    await browser.run(notice.filter(has_text="this session's budget is spent").wait_for())
    await wait_idle(browser, page)
    cost = page.locator("#session-cost")
    await browser.run(cost.filter(has_text=re.compile(r"\$0\.\d{4} of \$0\.0100")).wait_for())
    listed = await client.call("session.list")
    spent = next(s for s in listed["sessions"] if s["sessionId"] == session_id)["usage"]
    assert spent["costUsd"] > 0.01
    assert f"${spent['costUsd']:.4f}" in await browser.run(cost.inner_text())
    today = page.locator("#usage-today")
    await browser.run(today.filter(has_text="Today: $").wait_for())

    # The next prompt is refused, and says why.
    await send(browser, page, "once more")
    await browser.run(page.locator(".toast.error").filter(has_text="budget").wait_for())
    await browser.run(page.screenshot(path=str(screenshot_dir() / "budget.png")))

    # A higher budget: the next run goes, and the stop is history.
    await client.call("session.set_budget", {"sessionId": session_id, "budgetUsd": 100})
    script(Text("Going on."))
    await send(browser, page, "go on")
    await browser.run(last_answer(page).filter(has_text="Going on.").wait_for())
    assert not await browser.run(page.is_visible("#budget-notice"))
    await client.disconnect()


def test_the_logged_link_is_the_only_place_the_token_shows(tmp_path):
    """twistd with a newly generated token: its one start-up line carries the web client's
    link, the token in its fragment; the redaction keeps the token out of every other line,
    the access log of a signed-in page included."""
    port = free_port()
    log_file = tmp_path / "piserver.log"
    twistd = str(Path(sys.executable).parent / "twistd")
    server = subprocess.Popen(
        [
            twistd,
            "-n",
            "--logfile",
            str(log_file),
            "piserver",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--data-dir",
            str(tmp_path / "data"),
            "--pi",
            VERSION_ONLY_PI,
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: health_ok(port), 60, "/health to answer")
        token = (tmp_path / "data" / "server-token").read_text().strip()
        for path in ("/ui", "/ui/assets/app.js", f"/ui?token={token}"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30).close()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/ui/auth", headers={"Authorization": f"Bearer {token}"}
        )
        urllib.request.urlopen(request, timeout=30).close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    lines = log_file.read_text().splitlines()
    (shown,) = [line for line in lines if token in line]
    assert f"http://127.0.0.1:{port}/ui#token={token} " in shown
    assert any("GET /ui/assets/app.js" in line for line in lines)


@pytest_twisted.ensureDeferred
async def test_import_a_desk_session_prompt_and_export(
    browser, server, llm, script, pi_binary, tmp_path
):
    # The user talks to pi at the desk (the real pi), then picks the conversation up here.
    desk = tmp_path / "desk"
    desk.mkdir()
    script(Text("Noted: the colour is teal."), Text("It is teal."))
    pi = spawn_pi(
        reactor,
        pi_binary,
        server.agent_dir,
        ["--session-dir", str(desk_sessions(server.agent_dir) / encode_cwd(str(desk)))],
        cwd=desk,
    )
    await pi.send({"type": "prompt", "message": "remember the colour teal"})
    await pi.wait_for_event("agent_end")
    await pi.stop()

    page = await signed_in(browser, server, viewport=DESKTOP)
    await browser.run(page.click("#import-toggle"))
    found = page.locator(".importable-item", has_text="remember the colour teal")
    assert str(desk) in await browser.run(found.inner_text())
    await browser.run(page.screenshot(path=str(screenshot_dir() / "import.png")))
    await browser.run(found.click())
    await browser.run(page.wait_for_url(re.compile(r"/ui/sessions/[^/]+$")))
    earlier = page.locator(".message.assistant", has_text="Noted: the colour is teal.")
    await browser.run(earlier.wait_for())
    await send(browser, page, "which colour?")
    await browser.run(last_answer(page).filter(has_text="It is teal.").wait_for())
    assert "remember the colour teal" in json.dumps(llm.requests[-1]["messages"])
    await wait_idle(browser, page)

    async def download():
        async with page.expect_download() as started:
            await page.click("#export")
        saved = await started.value
        return saved.suggested_filename, Path(await saved.path()).read_text()

    file_name, content = await browser.run(download())
    header = json.loads(content.split("\n", 1)[0])
    assert file_name.endswith(f"_{header['id']}.jsonl") and header["cwd"] == str(desk)
    assert "It is teal." in content


@pytest_twisted.ensureDeferred
async def test_a_read_only_device_sees_its_name_and_scopes_and_no_controls(browser, server):
    admin = await server.client()
    session_id = (await admin.call("session.create", {"mode": "chat"}))["sessionId"]
    store = DeviceTokenStore(server.agent_dir.path / DEVICE_TOKENS_FILE, clock=lambda: 0.0)
    token = store.add("wall-tablet", {Scope.READ})
    base = link_from_log(server).split("#", 1)[0]
    page = await open_page(browser, f"{base}#token={token}")
    await browser.run(page.locator("html[data-ready=true]").wait_for(state="attached"))
    await browser.run(page.locator("#device").filter(has_text="wall-tablet · read").wait_for())
    await browser.run(page.goto(f"{base}/sessions/{session_id}"))
    await browser.run(page.locator("#session-view").wait_for())
    await browser.run(page.locator("#device").filter(has_text="wall-tablet · read").wait_for())
    # It may watch: the session opens; what it may not do is not offered.
    for selector in ("#new-chat", "#composer", "#delete", "#model"):
        await browser.run(page.locator(selector).wait_for(state="hidden"))
    assert await browser.run(page.is_visible("#session-name"))
    store.revoke("wall-tablet")
    await admin.call("session.delete", {"sessionId": session_id})
