import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.support.fakegithub import TEST_TOKEN, FakeGithub
from tests.support.server import RunningServer


@pytest.fixture
def captured_log():
    """Every log line the server writes while the test runs (tracebacks included)."""
    lines = []

    def observe(event):
        lines.append(formatEvent(event) or "")
        failure = event.get("log_failure")
        if failure is not None:
            lines.append(failure.getTraceback())

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.async_yield_fixture
async def make_pi_server(agent_dir, pi_binary):
    """Factory: ``make_pi_server(*options, environ={...})`` starts pi-server (the real pi
    agent, the scripted LLM) with extra command-line options; all are stopped afterwards."""
    started = []

    def make(*extra_args, environ=None):
        server = RunningServer(agent_dir, pi_binary, extra_args, environ).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest_twisted.async_yield_fixture
async def pi_server(make_pi_server):
    """pi-server with its default options."""
    yield make_pi_server()


@pytest_twisted.async_yield_fixture
async def fake_github(tmp_path):
    """The GitHub stand-in on loopback, accepting ``TEST_TOKEN``."""
    fake = FakeGithub(str(tmp_path / "github"), token=TEST_TOKEN).start()
    yield fake
    await fake.stop()


@pytest_twisted.async_yield_fixture
async def proxy_trap():
    """A loopback listener git must never reach through a proxy (tests/support/hostilegit)."""
    from twisted.internet import reactor

    from tests.support.hostilegit import listen_proxy_trap

    trap, port = await listen_proxy_trap(reactor)
    yield trap
    await port.stopListening()
