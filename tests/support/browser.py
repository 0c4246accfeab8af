"""Debian's headless Chromium driven through Playwright, beside the Twisted reactor.

Playwright's API is asyncio; the tests run on Twisted's reactor (the server under test is in
the same process). :class:`Browser` runs Playwright's own event loop in a thread of its own
and :meth:`Browser.run` hands it a coroutine, answering with a Deferred the reactor waits on::

    browser = Browser.start()
    page = await browser.run(browser.new_page(viewport={"width": 375, "height": 812}))
    await browser.run(page.goto(url))
    browser.stop()

No browser is downloaded: the system's ``chromium`` (``scripts/install-chromium`` installs
it) or ``$PI_SERVER_TEST_CHROMIUM`` is launched. :class:`ServiceWorkerWatch` follows a
page's service worker through the DevTools protocol and delivers push messages to it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading

from twisted.internet import defer, reactor

CHROMIUM_FLAGS = [
    # The network here is closed: Chromium's own background connections only fail.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-gpu",
    # Tests run as root in CI.
    "--no-sandbox",
]

# Runs before the page's own scripts (Playwright injects it; the page's CSP does not apply).
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(
    [e.violatedDirective, e.blockedURI, e.sourceFile, e.lineNumber].join(" ")));
"""


def chromium_path() -> str:
    path = os.environ.get("PI_SERVER_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise RuntimeError("chromium not found: run scripts/install-chromium (tox does)")
    return path


class Browser:
    def __init__(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="playwright", daemon=True
        )
        self._playwright = None
        self.chromium = None
        self._profiles = []

    @classmethod
    def start(cls) -> Browser:
        browser = cls()
        browser._thread.start()
        browser._wait(browser._launch())
        return browser

    async def _launch(self):
        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        self.chromium = await self._playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )

    def _wait(self, coroutine):
        """Runs ``coroutine`` on Playwright's loop and blocks until it is done (set-up and
        tear-down only, when the reactor has nothing to do)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=120)

    def run(self, coroutine) -> defer.Deferred:
        """Runs ``coroutine`` on Playwright's loop; fires with its result in the reactor."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        result = defer.Deferred()

        def done(finished):
            error = finished.exception()
            if error is not None:
                reactor.callFromThread(result.errback, error)
            else:
                reactor.callFromThread(result.callback, finished.result())

        future.add_done_callback(done)
        return result

    async def new_page(self, **context_options):
        """A page in a fresh context (its own storage), which records CSP violations and
        dialogs of its own in ``window.__violations``."""
        context = await self.chromium.new_context(**context_options)
        await context.add_init_script(RECORD_VIOLATIONS)
        return await context.new_page()

    async def new_profile_page(self, user_data_dir, **context_options):
        """A page of a Chromium with a profile on disk (not incognito, as ``new_page``'s
        contexts are: Chromium does not install apps from those). It is a browser of its
        own, closed by :meth:`stop`."""
        context = await self._playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_FLAGS,
            **context_options,
        )
        self._profiles.append(context)
        await context.add_init_script(RECORD_VIOLATIONS)
        return context.pages[0] if context.pages else await context.new_page()

    def stop(self) -> None:
        async def close():
            for context in self._profiles:
                await context.close()
            await self.chromium.close()
            await self._playwright.stop()

        try:
            self._wait(close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)


class ServiceWorkerWatch:
    """A page's service worker as the DevTools protocol reports it: the registration whose
    scope ends with ``scope_suffix``, the running status of each of its versions and the
    errors it reported. The protocol's events come on Playwright's thread and are handled
    on the reactor's; a test that waits too long fails showing what the worker was doing."""

    def __init__(self, browser: Browser, cdp, scope_suffix: str):
        self._browser = browser
        self._cdp = cdp
        self._scope_suffix = scope_suffix
        self.registration_id = None
        self.running = {}  # versionId -> runningStatus: stopped, starting, running, stopping
        self.errors = []
        self.lost = 0  # pushes delivered that showed nothing
        self._registered = defer.Deferred()

    async def start(self) -> ServiceWorkerWatch:
        for name, handler in [
            ("ServiceWorker.workerRegistrationUpdated", self._registrations),
            ("ServiceWorker.workerVersionUpdated", self._versions),
            ("ServiceWorker.workerErrorReported", self._error),
        ]:
            self._cdp.on(name, lambda event, on=handler: reactor.callFromThread(on, event))
        await self._browser.run(self._cdp.send("ServiceWorker.enable"))
        try:
            await self._registered.addTimeout(30, reactor)
        except defer.TimeoutError as timed_out:
            raise self._late("registration", 30) from timed_out
        return self

    def _late(self, what: str, timeout: float) -> AssertionError:
        return AssertionError(
            f"service worker: no {what} in {timeout} s; registration {self.registration_id},"
            f" versions {self.running}, errors {self.errors}, pushes lost {self.lost}"
        )

    def _registrations(self, event):
        for registration in event["registrations"]:
            deleted = registration.get("isDeleted")
            if registration["scopeURL"].endswith(self._scope_suffix) and not deleted:
                self.registration_id = registration["registrationId"]
                if not self._registered.called:
                    self._registered.callback(None)

    def _versions(self, event):
        for version in event["versions"]:
            self.running[version["versionId"]] = version["runningStatus"]

    def _error(self, event):
        self.errors.append(event["errorMessage"])

    async def push(self, origin: str, data: str, shown, what: str):
        """Delivers ``data`` as a push message and answers ``shown()``'s result (a page
        evaluation that ends once the worker showed something). A push that DevTools hands
        to Chromium is sometimes lost on a loaded machine (the first of the test's two, in 4
        of 8 runs at load 4: permission granted, no worker error, nothing shown in 90 s,
        where a push that shows does so within 0.1 s; the same message delivered again
        shows). So, as a push service does with a message it got no receipt for, it
        is delivered once more after 10 s; what the server pushes is checked at the push
        service stand-in, not here."""
        for attempt, timeout in enumerate([10, 30]):
            await self._browser.run(
                self._cdp.send(
                    "ServiceWorker.deliverPushMessage",
                    {"origin": origin, "registrationId": self.registration_id, "data": data},
                )
            )
            try:
                return await shown().addTimeout(timeout, reactor)
            except defer.TimeoutError as timed_out:
                self.lost += 1
                if attempt:
                    raise self._late(what, 10 + timeout) from timed_out
