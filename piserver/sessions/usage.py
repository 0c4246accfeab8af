"""
What the agents cost: every assistant message's usage (pi's ``message_end``), added to
its session, its day (in the budget time zone), its model and the device that started
the run, and kept in ``usage.json`` in the data dir.

Only ``message_end`` is read: pi repeats the running usage on every per-token
``message_update``, which never reaches the session observers (observer.py), so accounting
costs nothing per streamed token. Each recorded message (and each budget warning given) is
one line appended to ``usage.json.<generation>.log`` (O(1), no fsync: a ``kill -9`` loses
nothing, a power cut at most the last lines); ``usage.json`` holds the totals up to its
``generation``. At start, and every ``COMPACT_EVERY`` lines, the totals are written to a
new ``usage.json`` of the next generation (atomically, fsynced) and the old log removed: a
crash between the two leaves the old log ignored, never counted twice.

Rows are keyed by (day, model, session, device): every total is a sum of rows, so a
report can be filtered by any of them (by the devices a caller may see, for one).
A deleted session's rows stay (the day totals do not shrink); a fork is a new session
and starts from zero.
"""

import json
import math
import os
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import attr
from twisted.logger import Logger

from piserver.common.errors import InvalidParams
from piserver.common.files import CorruptFileError, load_json, write_json_atomic

USAGE_FILE = "usage.json"
# Lines appended to the log before the totals are written out again.
COMPACT_EVERY = 1000
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
        # The log of what came after usage.json's totals (see the module's docstring).
        self._generation = 0
        self._log_fd: int | None = None
        self._logged = 0

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
        """The totals of ``usage.json`` and its log; then a fresh generation is begun."""
        try:
            document = load_json(self.path, self.log)
        except CorruptFileError as e:
            self.log.critical("usage totals lost: {problem}", problem=str(e))
            document = None
        except OSError as e:
            self.log.critical("usage totals unreadable: {error}", error=str(e))
            document = None
        document = document or {}
        generation = document.get("generation", 0)
        self._generation = generation if isinstance(generation, int) else 0
        rows, warned = document.get("rows"), document.get("warned")
        for row in rows if isinstance(rows, list) else []:
            self._add_row(row)
        self._warned = {
            w for w in (warned if isinstance(warned, list) else []) if isinstance(w, str)
        }
        self._replay(self._log_path(self._generation))
        self.compact()

    def _add_row(self, row) -> None:
        try:
            key = RowKey(row["day"], row["model"], row["sessionId"], row["device"])
            if not all(isinstance(part, str) for part in attr.astuple(key)):
                raise TypeError("not a string")
        except (KeyError, TypeError, AttributeError) as e:
            self.log.warn("skipping a bad usage row: {error}", error=repr(e))
            return
        self._add(key, Usage.from_wire(row.get("usage")))

    def _replay(self, log_path: Path) -> None:
        try:
            data = log_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            self.log.critical("usage log unreadable: {error}", error=str(e))
            return
        for line in data.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                # A line cut short by a crash: the message it was for is not counted.
                self.log.warn("skipping a torn line of {path}", path=str(log_path))
                continue
            if isinstance(entry, dict) and isinstance(entry.get("warned"), str):
                self._warned.add(entry["warned"])
            elif isinstance(entry, dict):
                self._add_row(entry)

    def _log_path(self, generation: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{generation}.log")

    def compact(self) -> None:
        """Write the totals as the next generation's ``usage.json`` and drop older logs."""
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
        document = {
            "version": 1,
            "generation": self._generation + 1,
            "rows": rows,
            "warned": sorted(self._warned),
        }
        try:
            write_json_atomic(self.path, document)
        except OSError as e:
            # The current log keeps everything; try again later.
            self.log.error("could not write {path}: {error}", path=str(self.path), error=str(e))
            return
        self._close_log()
        self._generation += 1
        self._logged = 0
        prefix = f"{self.path.name}."
        for old in self.path.parent.glob(f"{prefix}*.log"):
            if old.name != self._log_path(self._generation).name:
                try:
                    old.unlink()
                except OSError:
                    pass

    def _append(self, entry: dict) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            if self._log_fd is None:
                self._log_fd = os.open(
                    self._log_path(self._generation),
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                    0o600,
                )
            os.write(self._log_fd, line.encode("utf-8"))
        except OSError as e:
            # Totals stay right in memory; writing them out whole is tried next.
            self.log.error("could not append to the usage log: {error}", error=str(e))
            self._close_log()
            self.compact()
            return
        self._logged += 1
        if self._logged >= COMPACT_EVERY:
            self.compact()

    def _close_log(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def close(self) -> None:
        self._close_log()

    def record(self, session_id: str, device: str, model: str, usage: Usage) -> None:
        key = RowKey(self.today(), model, session_id, device)
        self._add(key, usage)
        self._append(
            {
                "day": key.day,
                "model": key.model,
                "sessionId": key.session,
                "device": key.device,
                "usage": usage.to_wire(),
            }
        )

    def _add(self, key: RowKey, usage: Usage) -> None:
        self._rows[key] = self._rows.get(key, ZERO) + usage
        for totals, name in (
            (self._by_session, key.session),
            (self._by_day, key.day),
            (self._by_model, key.model),
        ):
            totals[name] = totals.get(name, ZERO) + usage

    def warn_once(self, scope_key: str) -> bool:
        """True the first time ``scope_key`` is given (persisted), False afterwards."""
        if scope_key in self._warned:
            return False
        self._warned.add(scope_key)
        self._append({"warned": scope_key})
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
