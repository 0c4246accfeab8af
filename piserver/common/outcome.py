"""
One outcome that many callers wait for.

An agent's start-up answer, its exit, a session's agent being started, a GitHub
listing under way: each arrives once and anyone may be waiting for it. Each
``observe()`` returns a Deferred of its own, so a caller that adds callbacks or
cancels its wait disturbs nobody else, and a failure that nobody waited for is
not reported as an unhandled error.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure


class SharedOutcome:
    def __init__(self) -> None:
        self._waiting: list[defer.Deferred] = []
        self.settled = False
        self._result: Any = None

    @property
    def waiting(self) -> int:
        """How many callers wait (a cancelled wait is no longer counted)."""
        return len(self._waiting)

    def observe(self) -> defer.Deferred:
        """A new Deferred firing with the outcome (at once if it is known)."""
        if self.settled:
            if isinstance(self._result, Failure):
                return defer.fail(self._result)
            return defer.succeed(self._result)
        waiting: defer.Deferred = defer.Deferred(self._waiting.remove)
        self._waiting.append(waiting)
        return waiting

    def settle(self, result: Any) -> None:
        """Fire every waiter with ``result`` (a value or a Failure); later calls are ignored."""
        if self.settled:
            return
        self.settled = True
        self._result = result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
