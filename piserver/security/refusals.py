"""
What the server refuses to strangers (upgrades, slow or oversized requests,
broken frames) is counted in the metrics and logged at a bounded rate, one
line each: a flood of refusals cannot fill the log.

Each kind may log ``burst`` lines per ``window`` seconds; the rest are only
counted, and the first line of the next window says how many were left out.
"""

from twisted.logger import Logger

log = Logger()

DEFAULT_WINDOW = 60.0
DEFAULT_BURST = 10


class Refusals:
    """``metrics`` is a ``metrics.ServerMetrics`` (its ``refusals`` counter), ``clock``
    IReactorTime."""

    def __init__(self, metrics, clock, window: float = DEFAULT_WINDOW, burst: int = DEFAULT_BURST):
        self._metrics = metrics
        self._clock = clock
        self._window = window
        self._burst = burst
        # kind -> [window start, lines logged in it, lines left out]
        self._budgets: dict[str, list] = {}

    def refused(self, kind: str, peer: str, reason: str) -> None:
        """Count a refusal of ``kind`` (a metrics label), and log it if the budget allows.
        ``reason`` is a fixed text of ours, never anything the client sent."""
        self._metrics.refusals.labels(kind=kind).inc()
        now = self._clock.seconds()
        budget = self._budgets.setdefault(kind, [now, 0, 0])
        if now - budget[0] >= self._window:
            left_out = budget[2]
            budget[:] = [now, 0, 0]
            if left_out:
                log.warn(
                    "{left_out} more refusals ({kind}) were not logged in the last {window:.0f} s",
                    left_out=left_out,
                    kind=kind,
                    window=self._window,
                )
        if budget[1] >= self._burst:
            budget[2] += 1
            return
        budget[1] += 1
        log.warn("refused {peer} ({kind}): {reason}", peer=peer, kind=kind, reason=reason)
