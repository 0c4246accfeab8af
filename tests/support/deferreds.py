"""Reading Deferreds that fired synchronously (fake clocks, StubTreq)."""

from twisted.python.failure import Failure


def result_of(deferred):
    """The result of a Deferred that has already fired; its failure is raised."""
    results = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def outcome_of(deferred):
    """The result of a Deferred that has already fired, or its Failure (not raised)."""
    outcomes = []
    deferred.addBoth(outcomes.append)
    assert outcomes, "the Deferred has not fired"
    return outcomes[0]
