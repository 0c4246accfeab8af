"""
pi-server in a process of its own, for the benchmarks.

``python -m bench.serve OPTIONS`` runs the service tree with those pi-server
options (``--port``, ``--data-dir``, ``--pi``, ...), writes one JSON line
``{"port": N}`` on stdout once it listens, and stops when its stdin closes.
``--profile FILE`` before those options runs the server under cProfile and writes
its statistics (``pstats``) to FILE when it stops (``python -m bench.hotpath``).

The benchmarks time the relay from outside: their clients and the direct
readers they compare with live in the bench process, so none of their work is
charged to the server's thread.
"""

import cProfile
import json
import os
import sys

from twisted.internet import defer, protocol, stdio, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from piserver.service import build_service
from piserver.tap import Options


class _Control(protocol.Protocol):
    """stdin/stdout of this process: the port goes out, end of input stops the server."""

    def __init__(self, closed: defer.Deferred):
        self._closed = closed

    def connectionLost(self, reason=None):
        if not self._closed.called:
            self._closed.callback(None)


async def serve(reactor, args: list[str]) -> None:
    options = Options(environ=dict(os.environ))
    options.parseOptions(args)
    service = build_service(options.config, reactor)
    service.startService()
    if service.address is None:
        raise RuntimeError("pi-server is not listening")
    closed = defer.Deferred()
    control = stdio.StandardIO(_Control(closed), reactor=reactor)
    control.write(json.dumps({"port": service.address.port}).encode() + b"\n")
    await closed
    await service.stopService()


def main(reactor, *args):
    args = list(args)
    profile = None
    if args[:1] == ["--profile"]:
        profile = cProfile.Profile()
        statistics, args = args[1], args[2:]
    # Warnings and errors go to stderr, where the bench shows them if a run fails.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ]
    )
    if profile is None:
        return defer.ensureDeferred(serve(reactor, args))

    def stopped(result):
        profile.disable()
        profile.dump_stats(statistics)
        return result

    profile.enable()
    return defer.ensureDeferred(serve(reactor, args)).addBoth(stopped)


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
