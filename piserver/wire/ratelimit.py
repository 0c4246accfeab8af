"""
A token bucket: at most ``rate`` requests a second on average, ``burst`` at once.
"""


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock):
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock.seconds()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
