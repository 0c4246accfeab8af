"""
What the agents cost: every assistant message's usage (pi's ``message_end``), added to
its session, its day (in the budget time zone), its model and the device that started
the run, and kept in ``usage.json`` in the data dir.

Only ``message_end`` is read: pi repeats the running usage on every per-token
``message_update``, which never reaches the session observers (observer.py), so accounting
costs nothing per streamed token. The ledger is rewritten atomically (temp file, rename;
no fsync) after each assistant message it records: a restart or a ``kill -9`` loses
nothing that was recorded (a power cut may lose the last writes), and a message is
recorded as soon as pi reports it ended.

Rows are keyed by (day, model, session, device): every total is a sum of rows, so a
report can be filtered by any of them (by the devices a caller may see, for one).
A deleted session's rows stay (the day totals do not shrink); a fork is a new session
and starts from zero.
"""

import math
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import attr
from twisted.logger import Logger

from piserver.common.errors import InvalidParams
from piserver.common.files import CorruptFileError, load_json, write_json_atomic

USAGE_FILE = "usage.json"
# The device key of a run started with the server token (or without authentication):
# no device token name can hold parentheses.
SERVER_DEVICE = "(server)"
REPORT_KEYS = ("day", "model", "session", "device")
# pi's token counts, in the order the wire and the metrics name them.
TOKEN_KINDS = ("input", "output", "cacheRead", "cacheWrite")
# Anything larger in one message is not a token count (agent output is untrusted).
MAX_TOKENS = 10**12
MAX_COST = 10.0**6


def _count(value) -> int:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        return 0
    return int(min(value, MAX_TOKENS))


@attr.frozen
class Usage:
    """Tokens and cost, summed."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.input + other.input,
            self.output + other.output,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
            self.total_tokens + other.total_tokens,
            self.cost_usd + other.cost_usd,
        )

    def to_wire(self) -> dict:
        return {
            "input": self.input,
            "output": self.output,
            "cacheRead": self.cache_read,
            "cacheWrite": self.cache_write,
            "totalTokens": self.total_tokens,
            # Float sums drift in the last digits: a micro-dollar is precise enough.
            "costUsd": round(self.cost_usd, 6),
        }

    def tokens(self) -> dict:
        return dict(
            zip(
                TOKEN_KINDS,
                (self.input, self.output, self.cache_read, self.cache_write),
                strict=True,
            )
        )

    @classmethod
    def from_wire(cls, value) -> "Usage":
        """What ``to_wire`` wrote (or pi's usage object): bad fields count as zero."""
        if not isinstance(value, dict):
            return cls()
        cost = value.get("costUsd")
        if cost is None and isinstance(value.get("cost"), dict):
            cost = value["cost"].get("total")
        if type(cost) not in (int, float) or not math.isfinite(cost) or cost < 0:
            cost = 0.0
        counts = [_count(value.get(kind)) for kind in TOKEN_KINDS]
        total = _count(value.get("totalTokens")) or sum(counts)
        return cls(*counts, total, float(min(cost, MAX_COST)))


ZERO = Usage()


def message_usage(message) -> tuple[str, Usage] | None:
    """``(model, usage)`` of a pi assistant message (``message_end``'s ``message``), where
    the model is ``provider/id``; None for any other message."""
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return None
    if not isinstance(message.get("usage"), dict):
        return None
    provider, model = message.get("provider"), message.get("model")
    name = (
        f"{provider}/{model}"
        if isinstance(provider, str) and isinstance(model, str)
        else str(model if isinstance(model, str) else "unknown")
    )
    return name[:200], Usage.from_wire(message["usage"])


@attr.frozen
class RowKey:
    day: str
    model: str
    session: str
    device: str


def parse_day(value, name: str) -> str | None:
    """A ``YYYY-MM-DD`` parameter, or None when absent."""
    if value is None:
        return None
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidParams(f'"{name}" must be a day as YYYY-MM-DD') from None


class UsageLedger:
    """The totals, in memory and in ``path``. ``clock`` is an IReactorTime; days are
    counted in ``timezone``."""

    log = Logger()

    def __init__(self, path: Path, clock, timezone: ZoneInfo):
        self.path = Path(path)
        self._clock = clock
        self.timezone = timezone
        self._rows: dict[RowKey, Usage] = {}
        # Running totals, so that session.list and budget checks never sum the rows.
        self._by_session: dict[str, Usage] = {}
        self._by_day: dict[str, Usage] = {}
        self._by_model: dict[str, Usage] = {}
        # Budget warnings already given (scope keys, see budgets.py): once each.
        self._warned: set[str] = set()

    # -- time -----------------------------------------------------------------

    def today(self) -> str:
        return self.day_of(self._clock.seconds())

    def day_of(self, seconds: float) -> str:
        return datetime.fromtimestamp(seconds, self.timezone).date().isoformat()

    def next_day_starts(self) -> float:
        """Clock seconds at which the next day begins in the budget time zone."""
        today = datetime.fromtimestamp(self._clock.seconds(), self.timezone).date()
        return datetime.combine(today + timedelta(days=1), time(0), self.timezone).timestamp()

    # -- recording --------------------------------------------------------------

    def load(self) -> None:
        try:
            document = load_json(self.path, self.log)
        except CorruptFileError as e:
            self.log.critical("usage totals lost: {problem}", problem=str(e))
            return
        except OSError as e:
            self.log.critical("usage totals unreadable: {error}", error=str(e))
            return
        if document is None:
            return
        rows, warned = document.get("rows"), document.get("warned")
        for row in rows if isinstance(rows, list) else []:
            try:
                key = RowKey(row["day"], row["model"], row["sessionId"], row["device"])
                if not all(isinstance(part, str) for part in attr.astuple(key)):
                    raise TypeError("not a string")
            except (KeyError, TypeError, AttributeError) as e:
                self.log.warn("skipping a bad usage row: {error}", error=repr(e))
                continue
            self._add(key, Usage.from_wire(row.get("usage")))
        self._warned = {
            w for w in (warned if isinstance(warned, list) else []) if isinstance(w, str)
        }

    def record(self, session_id: str, device: str, model: str, usage: Usage) -> None:
        self._add(RowKey(self.today(), model, session_id, device), usage)
        self._save()

    def _add(self, key: RowKey, usage: Usage) -> None:
        self._rows[key] = self._rows.get(key, ZERO) + usage
        for totals, name in (
            (self._by_session, key.session),
            (self._by_day, key.day),
            (self._by_model, key.model),
        ):
            totals[name] = totals.get(name, ZERO) + usage

    def _save(self) -> None:
        rows = [
            {
                "day": key.day,
                "model": key.model,
                "sessionId": key.session,
                "device": key.device,
                "usage": usage.to_wire(),
            }
            for key, usage in self._rows.items()
        ]
        try:
            # Rewritten after every message on the reactor thread: no fsync (it cost 1-14 ms
            # here); a kill -9 loses nothing, a power cut at most the last writes.
            write_json_atomic(
                self.path,
                {"version": 1, "rows": rows, "warned": sorted(self._warned)},
                durable=False,
            )
        except OSError as e:
            # Totals stay right in memory; the next message tries again.
            self.log.error("could not write {path}: {error}", path=str(self.path), error=str(e))

    def warn_once(self, scope_key: str) -> bool:
        """True the first time ``scope_key`` is given (persisted), False afterwards."""
        if scope_key in self._warned:
            return False
        self._warned.add(scope_key)
        self._save()
        return True

    # -- totals -----------------------------------------------------------------

    def session_total(self, session_id: str) -> Usage:
        return self._by_session.get(session_id, ZERO)

    def day_total(self, day: str | None = None) -> Usage:
        return self._by_day.get(day or self.today(), ZERO)

    def model_totals(self) -> dict[str, Usage]:
        return dict(self._by_model)

    def report(self, by: str, first: str | None = None, last: str | None = None, keep=None):
        """``[(key, usage)]`` summed by ``by`` (one of REPORT_KEYS) over the days from
        ``first`` to ``last`` (inclusive, ``YYYY-MM-DD``); ``keep(row_key)`` filters rows."""
        field = "session" if by == "session" else by
        totals: dict[str, Usage] = {}
        for key, usage in self._rows.items():
            if (first is not None and key.day < first) or (last is not None and key.day > last):
                continue
            if keep is not None and not keep(key):
                continue
            name = getattr(key, field)
            totals[name] = totals.get(name, ZERO) + usage
        return sorted(totals.items())
