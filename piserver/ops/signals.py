"""
SIGTERM and SIGINT handed to the reactor thread, so that a stop cannot deadlock.

Twisted's handlers log from inside the signal handler (Twisted issue 7736). The log's lock is
a Python-level re-entrant lock: a signal that lands just as the reactor thread takes it (every
connection opened or closed is logged) waits for the lock its own thread holds, forever, and
the server never stops (CI saw this once). The handlers installed here do nothing in the
signal's context but hand the signal over; Twisted's handler then runs on the reactor thread as
usual (it logs, stops the reactor, and twistd exits with the signal).
"""

import signal
from types import FrameType

from twisted.application import service


class SignalsToReactor(service.Service):
    """Once the reactor runs, replaces its own SIGTERM and SIGINT handlers (and no one
    else's: a test's reactor without handlers is left alone)."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        # After the reactor installed its handlers (it does so as it starts running).
        self._reactor.callWhenRunning(self.install)

    def install(self) -> None:
        for number, handler in (
            (signal.SIGTERM, self._reactor.sigTerm),
            (signal.SIGINT, self._reactor.sigInt),
        ):
            if signal.getsignal(number) == handler:
                signal.signal(number, self._handing_over(handler))

    def _handing_over(self, handler):
        def on_signal(number: int, frame: FrameType | None) -> None:
            # No log and no lock here: only a list append and a write to the waker.
            self._reactor.callFromThread(handler, number, None)

        return on_signal
