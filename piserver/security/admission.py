"""
An overall cap on connections that have not authenticated, so that strangers cannot
spend the server's file descriptors (a slowloris spread over many addresses).

A connection is counted from the moment it is accepted until it is an authenticated
WebSocket (or closed): HTTP requests still arriving, kept-alive HTTP connections and
upgrades being checked alike. The cap is well below the descriptor limit
(``default_max_pending``), so authenticated clients and the agents always have room.

When the cap is reached, room is shared fairly between addresses (``AddressKeys``): a
connection from an address that holds as many as the heaviest address is refused at once
(closed, no answer: the cheapest thing to do); one from an address holding fewer takes
the place of the oldest connection of the heaviest address, which is closed. A client
that comes and completes its handshake in a few round trips is served however many
connections a distributed slowloris keeps open.
"""

import resource
from typing import Protocol

# Of the descriptor limit, the share strangers may hold: the rest is for authenticated
# connections, agents' pipes, journals and the data dir's files.
PENDING_SHARE = 0.5
# With a generous descriptor limit (the systemd unit's), memory bounds it instead.
MAX_DEFAULT_PENDING = 4096
MIN_DEFAULT_PENDING = 16


def default_max_pending(nofile: int | None = None) -> int:
    """Half the soft ``RLIMIT_NOFILE`` (as the process starts), at least 16 and at most
    4,096."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY:
        return MAX_DEFAULT_PENDING
    return max(MIN_DEFAULT_PENDING, min(MAX_DEFAULT_PENDING, int(nofile * PENDING_SHARE)))


def raise_nofile_limit() -> int:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit (a unit's ``LimitNOFILE=``, a
    shell's ``ulimit -Hn``); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class Closable(Protocol):
    """A connection's transport, as far as the cap needs it."""

    def abortConnection(self) -> None: ...


class PendingConnections:
    """The connections not yet authenticated, by transport, in order of arrival per
    address key. ``on_refused(kind, key, message)`` hears of each refusal and eviction."""

    def __init__(self, limit: int, on_refused=None):
        self.limit = limit
        self._on_refused = on_refused
        # transport -> its address key
        self._keys: dict = {}
        # key -> {transport: None}, oldest first
        self._by_key: dict[str, dict] = {}
        # count -> {key: None}: the keys holding that many, for the heaviest in O(1)
        self._by_count: dict[int, dict[str, None]] = {}
        self._heaviest = 0

    def __len__(self) -> int:
        return len(self._keys)

    def admit(self, transport: Closable, key: str) -> bool:
        """Count ``transport`` (from ``key``) if there is room or it may take the place of
        the heaviest address's oldest; False (and the caller closes it) otherwise."""
        if len(self._keys) >= self.limit:
            held = len(self._by_key.get(key, ()))
            if held >= self._heaviest:
                self._refused(
                    "pending_cap",
                    key,
                    f"{self.limit} connections that have not authenticated are open "
                    "(--max-pending); this address holds as many as any",
                )
                return False
            heaviest = next(iter(self._by_count[self._heaviest]))
            oldest = next(iter(self._by_key[heaviest]))
            self.release(oldest)
            self._refused(
                "pending_evicted",
                heaviest,
                f"{self.limit} connections that have not authenticated are open "
                "(--max-pending): the oldest of the address holding most was closed",
            )
            oldest.abortConnection()
        self._keys[transport] = key
        held = self._by_key.setdefault(key, {})
        self._move(key, len(held), len(held) + 1)
        held[transport] = None
        return True

    def release(self, transport) -> None:
        """``transport`` authenticated or closed: it no longer counts (idempotent)."""
        key = self._keys.pop(transport, None)
        if key is None:
            return
        held = self._by_key[key]
        del held[transport]
        self._move(key, len(held) + 1, len(held))
        if not held:
            del self._by_key[key]

    def _move(self, key: str, before: int, after: int) -> None:
        if before:
            keys = self._by_count[before]
            del keys[key]
            if not keys:
                del self._by_count[before]
        if after:
            self._by_count.setdefault(after, {})[key] = None
        if after > self._heaviest:
            self._heaviest = after
        elif before == self._heaviest and before not in self._by_count:
            # Counts change by one at a time: the next heaviest holds one less, this key
            # among them (or none is left).
            self._heaviest = after

    def _refused(self, kind: str, key: str, message: str) -> None:
        if self._on_refused is not None:
            self._on_refused(kind, key, message)
