"""Record the streams of :data:`tests.support.events.RECORDED` again from the real pi:
``python -m tests.support.events.record`` (from the repository root). :func:`record`
runs one scenario of :mod:`tests.support.events` and returns pi's event lines."""

import tempfile
from pathlib import Path

from twisted.internet import defer, task

from tests.support import events
from tests.support.fakellm import FakeLLM
from tests.support.piagent import locate_pi, spawn_pi, write_agent_dir


async def record(reactor, name: str) -> list[bytes]:
    llm = FakeLLM(reactor)
    await llm.start()
    try:
        with tempfile.TemporaryDirectory() as root:
            agent_dir = write_agent_dir(Path(root), llm.base_url)
            pi = spawn_pi(reactor, locate_pi(), agent_dir, ["--no-session"])
            lines = events.RawLines(pi)
            try:
                await getattr(events, name)(pi, llm, agent_dir)
            finally:
                await pi.stop()
    finally:
        await llm.stop()
    return lines.events()


def main(reactor):
    async def record_all():
        for name in events.RECORDED:
            lines = await record(reactor, name)
            recorded = b"".join(line + b"\n" for line in lines)
            (events.DIRECTORY / f"{name}.jsonl").write_bytes(recorded)

    return defer.ensureDeferred(record_all())


if __name__ == "__main__":
    task.react(main)
