"""SharedOutcome: one result, any number of waiters, none disturbing another."""

from twisted.internet import defer
from twisted.python.failure import Failure

from piserver.common.outcome import SharedOutcome


def results(d):
    seen = []
    d.addBoth(seen.append)
    return seen


def test_every_waiter_gets_the_value_and_late_ones_too():
    outcome = SharedOutcome()
    first, second = results(outcome.observe()), results(outcome.observe())
    cancelled = outcome.observe()
    cancelled.addErrback(lambda f: f.trap(defer.CancelledError))
    cancelled.cancel()
    assert outcome.waiting == 2
    outcome.settle(7)
    outcome.settle(8)  # only the first outcome counts
    assert first == second == [7]
    assert results(outcome.observe()) == [7]


def test_a_failure_reaches_each_waiter_and_is_not_unhandled_without_any():
    outcome = SharedOutcome()
    waiter = results(outcome.observe())
    outcome.settle(Failure(ValueError("no")))
    assert waiter[0].check(ValueError)
    nobody = SharedOutcome()
    nobody.settle(Failure(ValueError("quiet")))  # no "Unhandled error in Deferred"
    late = results(nobody.observe())
    assert late[0].check(ValueError)
