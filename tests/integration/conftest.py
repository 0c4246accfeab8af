import pytest_twisted

from tests.support.server import RunningServer


@pytest_twisted.async_yield_fixture
async def pi_server(agent_dir, pi_binary):
    """pi-server running the real pi agent against the scripted LLM (``fake_llm``)."""
    server = RunningServer(agent_dir, pi_binary).start()
    yield server
    await server.stop()
