"""Fixtures shared by all tests: a scripted LLM on loopback, a hermetic pi agent dir, the log."""

import os

import pytest
import pytest_twisted
from hypothesis import settings
from twisted.logger import globalLogPublisher

from tests.support import schema
from tests.support.fakellm import FakeLLM
from tests.support.piagent import AgentDir, PiNotInstalled, locate_pi, spawn_pi, write_agent_dir

# Property tests draw the same examples on every run (CI's verdict does not depend on a draw;
# a fresh clone has no example database). PI_SERVER_TEST_HYPOTHESIS=explore draws new ones
# each run, to hunt for what the repeatable ones miss.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("PI_SERVER_TEST_HYPOTHESIS", "repeatable"))


@pytest.fixture(autouse=True)
def frames_match_the_schema():
    """Every frame a test client receives must validate against the protocol schema."""
    schema.VIOLATIONS.clear()
    yield
    violations, schema.VIOLATIONS[:] = list(schema.VIOLATIONS), []
    assert not violations, "frames that do not match piserver/schema/protocol.json:\n" + "\n".join(
        f"{problem}: {str(frame)[:300]}" for problem, frame in violations[:10]
    )


@pytest.fixture
def logged():
    """Log events emitted while the test runs."""
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture(scope="session")
def pi_binary():
    """Path of the pinned pi agent. A missing agent fails the test (never skips it)."""
    try:
        return locate_pi()
    except PiNotInstalled as missing:
        problem = str(missing)
    pytest.fail(problem, pytrace=False)


@pytest_twisted.async_yield_fixture
async def fake_llm():
    """A started :class:`~tests.support.fakellm.FakeLLM` on 127.0.0.1, stopped afterwards."""
    from twisted.internet import reactor

    llm = FakeLLM(reactor)
    await llm.start()
    yield llm
    await llm.stop()


@pytest.fixture
def agent_dir(tmp_path, fake_llm) -> AgentDir:
    """pi's agent dir (models.json: provider ``fake`` at ``fake_llm``, models fake-1 and
    fake-2; settings.json: fake/fake-1 by default, no retries) plus a HOME and a project dir."""
    return write_agent_dir(tmp_path / "pi", fake_llm.base_url)


@pytest_twisted.async_yield_fixture
async def spawn_pi_rpc(pi_binary, agent_dir):
    """Factory: ``spawn_pi_rpc(*args)`` starts ``pi --mode rpc *args`` in ``agent_dir`` and
    returns its :class:`~tests.support.piagent.PiRpc`; every pi started is stopped afterwards."""
    from twisted.internet import reactor

    started = []

    def spawn(*args):
        rpc = spawn_pi(reactor, pi_binary, agent_dir, args)
        started.append(rpc)
        return rpc

    yield spawn
    for rpc in started:
        await rpc.stop()
