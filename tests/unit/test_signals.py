"""
ops.signals: SIGTERM and SIGINT reach the reactor's handlers on the reactor thread, and
nothing is logged (no lock taken) in the signal's own context.
"""

import os
import signal

import pytest

from piserver.ops.signals import SignalsToReactor


class Reactor:
    """What SignalsToReactor uses of a reactor; calls made "from a thread" are kept."""

    def __init__(self):
        self.when_running = []
        self.from_thread = []

    def callWhenRunning(self, f, *args):
        self.when_running.append((f, args))

    def callFromThread(self, f, *args):
        self.from_thread.append((f, args))

    def sigTerm(self, number, frame=None):
        raise AssertionError("run on the reactor thread, never in the signal handler")

    def sigInt(self, number, frame=None):
        raise AssertionError("run on the reactor thread, never in the signal handler")


@pytest.fixture
def handlers():
    """The process's SIGTERM and SIGINT handlers, put back after the test."""
    saved = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def started(reactor) -> SignalsToReactor:
    service = SignalsToReactor(reactor)
    service.startService()
    ((install, args),) = reactor.when_running
    install(*args)
    return service


def test_a_sigterm_is_handed_to_the_reactors_handler_without_logging(handlers, logged):
    reactor = Reactor()
    signal.signal(signal.SIGTERM, reactor.sigTerm)
    signal.signal(signal.SIGINT, reactor.sigInt)
    started(reactor)
    assert signal.getsignal(signal.SIGTERM) != reactor.sigTerm
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    # (Python runs a signal's handler before the next bytecode of the main thread.)
    assert reactor.from_thread == [
        (reactor.sigTerm, (signal.SIGTERM, None)),
        (reactor.sigInt, (signal.SIGINT, None)),
    ]
    assert logged == []


def test_only_the_reactors_own_handlers_are_replaced(handlers):
    reactor = Reactor()
    mine = lambda number, frame: None  # noqa: E731
    signal.signal(signal.SIGTERM, mine)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started(reactor)
    assert signal.getsignal(signal.SIGTERM) is mine
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
