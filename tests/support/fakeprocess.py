"""A fake IReactorProcess for unit tests: spawned processes are recorded, never run.

``FakeProcessReactor`` is a ``MemoryReactorClock`` (so also a task.Clock) whose
``spawnProcess`` connects the protocol to a ``FakeProcess`` transport that
records what was written to stdin, whether stdin was closed and which signals
were sent; the test plays the process side with ``stdout``/``stderr``/``end``.
"""

from __future__ import annotations

import json

import attr
from twisted.internet import error
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

SIGNAL_NUMBERS = {"TERM": 15, "KILL": 9, "INT": 2, "HUP": 1}


@implementer(IProcessTransport)
class FakeProcess:
    def __init__(self, protocol, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.written = bytearray()
        self.stdin_closed = False
        self.signals: list[str] = []
        self.ended = False
        # Signals the fake process dies of at once; others are only recorded.
        self.dies_of: set[str] = set()

    # IProcessTransport, as used by the code under test
    def write(self, data: bytes) -> None:
        assert not self.stdin_closed, "write after closeStdin"
        self.written += data

    def writeSequence(self, seq) -> None:
        for data in seq:
            self.write(data)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor) -> None:
        if descriptor == 0:
            self.closeStdin()

    def writeToChild(self, childFD, data) -> None:
        assert childFD == 0
        self.write(data)

    def loseConnection(self) -> None:
        self.closeStdin()

    def signalProcess(self, signalID) -> None:
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(signalID)
        if signalID in self.dies_of:
            self.end(signal=SIGNAL_NUMBERS[signalID])

    def getPeer(self):
        return None

    def getHost(self):
        return None

    # the process side, played by the test
    def lines(self) -> list[dict]:
        """Every JSON line written to stdin so far."""
        return [json.loads(line) for line in bytes(self.written).splitlines()]

    def stdout(self, data: bytes) -> None:
        self.protocol.childDataReceived(1, data)

    def stderr(self, data: bytes) -> None:
        self.protocol.childDataReceived(2, data)

    def respond(self, command: dict, data=None, success: bool = True, error_message=None):
        """Answer ``command`` (one of ``lines()``) the way pi does."""
        response = {
            "id": command["id"],
            "type": "response",
            "command": command["type"],
            "success": success,
        }
        if data is not None:
            response["data"] = data
        if error_message is not None:
            response["error"] = error_message
        self.stdout(json.dumps(response).encode() + b"\n")

    def end(self, code: int | None = 0, signal: int | None = None) -> None:
        """The process ends: pipes close, then processEnded, as in Twisted."""
        assert not self.ended
        self.ended = True
        self.protocol.childConnectionLost(1)
        self.protocol.childConnectionLost(2)
        self.protocol.childConnectionLost(0)
        if signal is None and code == 0:
            reason = Failure(error.ProcessDone(0))
        else:
            reason = Failure(error.ProcessTerminated(code, signal))
        self.protocol.processEnded(reason)


@attr.s(frozen=True)
class Spawn:
    process: FakeProcess = attr.ib()
    executable: str = attr.ib()
    args: list[str] = attr.ib()
    env: dict = attr.ib()
    path: str | None = attr.ib()


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawn] = []

    def spawnProcess(
        self,
        processProtocol,
        executable,
        args=(),
        env=None,
        path=None,
        uid=None,
        gid=None,
        usePTY=False,
        childFDs=None,
    ):
        process = FakeProcess(processProtocol, pid=1000 + len(self.spawned))
        self.spawned.append(Spawn(process, executable, list(args), dict(env or {}), path))
        processProtocol.makeConnection(process)
        return process
