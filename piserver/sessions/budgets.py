"""
Budgets that stop a run: a server-wide daily budget (``--daily-budget`` in USD,
``--daily-token-budget`` in tokens, for models without prices) and a per-session
budget in USD (``session.create`` ``budgetUsd``, ``session.set_budget``), kept in the
session's record.

Checked after every assistant message the ledger records (a message boundary): at 80 %
of a limit a ``budget_warning`` event (once per session and limit, once per day and
limit); at 100 % every run the budget covers is aborted (pi's ``abort``), its clients get
``budget_reached`` and later prompts are refused with ``budget_exceeded`` until the day
turns (in ``--budget-timezone``) or the limit is raised.
"""

import enum
import typing

import attr
from twisted.internet import defer
from twisted.logger import Logger

from piserver.common.errors import BudgetExceeded, InvalidParams
from piserver.sessions.observer import SessionObserver
from piserver.sessions.session import iso_time
from piserver.sessions.usage import UsageLedger

BUDGET_FIELD = "budgetUsd"  # its name on the wire and in the session's record
WARN_AT = 0.8
MAX_BUDGET = 10.0**6


class SessionControl(typing.Protocol):
    """What budgets need of the session manager."""

    sessions: dict

    def publish(self, session, event_type: str, payload: dict) -> None: ...

    async def command(self, session, command: str, /, **fields): ...

    async def abort(self, session) -> dict: ...

    def save(self, session) -> None: ...


def parse_budget(value, name: str = BUDGET_FIELD) -> float | None:
    """A budget in USD: a positive number, or null for none."""
    if value is None:
        return None
    if type(value) not in (int, float) or not (0 < value <= MAX_BUDGET):
        raise InvalidParams(f'"{name}" must be a positive number of USD (or null for none)')
    return float(value)


class Scope(enum.Enum):
    """What a budget covers: one session, or every session for a day."""

    SESSION = "session"
    DAY = "day"


@attr.frozen
class DailyLimits:
    usd: float | None = None
    tokens: int | None = None


@attr.frozen
class Spent:
    """Where one scope stands against its limit."""

    scope: Scope
    spent_usd: float
    limit_usd: float | None
    resets_at: str | None
    spent_tokens: int | None = None
    limit_tokens: int | None = None

    @property
    def fraction(self) -> float:
        if self.limit_tokens is not None:
            return self.spent_tokens / self.limit_tokens
        return self.spent_usd / self.limit_usd

    def to_wire(self, event_type: str) -> dict:
        payload = {
            "type": event_type,
            "scope": self.scope.value,
            "spentUsd": round(self.spent_usd, 6),
            "limitUsd": self.limit_usd,
            "resetsAt": self.resets_at,
        }
        if self.limit_tokens is not None:
            payload["spentTokens"] = self.spent_tokens
            payload["limitTokens"] = self.limit_tokens
        return payload

    def describe(self) -> str:
        if self.limit_tokens is not None:
            spent, limit = f"{self.spent_tokens} tokens", f"{self.limit_tokens} tokens"
        else:
            spent, limit = usd(self.spent_usd), usd(self.limit_usd)
        if self.scope is Scope.SESSION:
            return f"the session's budget of {limit} is spent ({spent})"
        return f"today's budget of {limit} is spent ({spent}); it resets at {self.resets_at}"


class Budgets(SessionObserver):
    """Checks the limits; each of ``notifiers``, ``notify(event, session, summary)``, tells
    whoever is not looking (the webhooks' ``Notifier``, Web Push's ``PushNotifier``)."""

    log = Logger()

    def __init__(
        self, ledger: UsageLedger, sessions: SessionControl, daily: DailyLimits, notifiers=()
    ):
        self._ledger = ledger
        self._sessions = sessions
        self.daily = daily
        self.notifiers = list(notifiers)
        # Sessions whose current run was already stopped (one budget_reached per run).
        self._stopped: set[str] = set()

    # -- where things stand -------------------------------------------------------

    def session_budget(self, session) -> float | None:
        return session.budget_usd

    def scopes(self, session) -> list[Spent]:
        """Every limit that covers ``session``, with what is spent against it."""
        found = []
        limit = self.session_budget(session)
        if limit is not None:
            spent = self._ledger.session_total(session.id).cost_usd
            found.append(Spent(Scope.SESSION, spent, limit, None))
        day = self._ledger.day_total()
        resets_at = iso_time(self._ledger.next_day_starts())
        if self.daily.usd is not None:
            found.append(Spent(Scope.DAY, day.cost_usd, self.daily.usd, resets_at))
        if self.daily.tokens is not None:
            found.append(
                Spent(Scope.DAY, day.cost_usd, None, resets_at, day.total_tokens, self.daily.tokens)
            )
        return found

    def exceeded(self, session) -> Spent | None:
        return next((s for s in self.scopes(session) if s.fraction >= 1.0), None)

    def admit(self, session) -> None:
        """Raise ``BudgetExceeded`` when a budget covering ``session`` is spent."""
        spent = self.exceeded(session)
        if spent is not None:
            how = (
                "raise it with session.set_budget"
                if spent.scope is Scope.SESSION
                else "or restart the server with a higher --daily-budget/--daily-token-budget"
            )
            raise BudgetExceeded(f"{spent.describe()}: {how}")

    def today(self) -> dict:
        """Today's total and the daily limits, for clients."""
        return {
            "day": self._ledger.today(),
            "usage": self._ledger.day_total().to_wire(),
            "limitUsd": self.daily.usd,
            "limitTokens": self.daily.tokens,
            "resetsAt": iso_time(self._ledger.next_day_starts()),
        }

    # -- changing the session budget ----------------------------------------------

    def set_session_budget(self, session, budget: float | None) -> None:
        session.budget_usd = budget
        self._sessions.save(session)

    # -- after each recorded message -----------------------------------------------

    def run_started(self, session) -> None:
        """A new run may be stopped again."""
        self._stopped.discard(session.id)

    def recorded(self, session) -> None:
        """An ``Accounting.on_recorded`` hook."""
        for spent in self.scopes(session):
            if spent.fraction >= 1.0:
                self._reached(session, spent)
            elif spent.fraction >= WARN_AT:
                self._warn(session, spent)

    def _warn(self, session, spent: Spent) -> None:
        if spent.scope is Scope.SESSION:
            key = f"session:{session.id}:{spent.limit_usd}"
        else:
            kind = "tokens" if spent.limit_tokens is not None else "usd"
            key = f"day:{self._ledger.today()}:{kind}:{spent.limit_tokens or spent.limit_usd}"
        if not self._ledger.warn_once(key):
            return
        self.log.info(
            "budget warning ({scope}): {what}", scope=spent.scope.value, what=_percent(spent)
        )
        self._sessions.publish(session, "budget_warning", spent.to_wire("budget_warning"))
        self._notify("budget_warning", session, f"{_percent(spent)}")

    def _reached(self, session, spent: Spent) -> None:
        if spent.scope is Scope.SESSION:
            covered = [session]
        else:
            # The day's budget stops every session in a run.
            covered = [session] + [
                s for s in self._sessions.sessions.values() if s is not session and s.streaming
            ]
        stopped_any = False
        for target in covered:
            if target.id in self._stopped:
                continue
            self._stopped.add(target.id)
            stopped_any = True
            self._sessions.publish(target, "budget_reached", spent.to_wire("budget_reached"))
            if target.streaming:
                self.log.info(
                    "session {session_id}: run aborted, {what}",
                    session_id=target.id,
                    what=spent.describe(),
                )
                self._abort(target)
        if stopped_any:
            self._notify("budget_reached", session, f"{spent.describe()}; the run was stopped")

    def _notify(self, event: str, session, summary: str) -> None:
        for notify in self.notifiers:
            notify(event, session, summary)

    def _abort(self, session) -> None:
        # The manager's abort: it ends the run even when pi does not answer (aborts.py).
        d = defer.ensureDeferred(self._sessions.abort(session))
        d.addErrback(
            lambda failure: self.log.failure(
                "session {session_id}: aborting the run over budget failed",
                failure,
                session_id=session.id,
            )
        )


def usd(amount: float) -> str:
    """Dollars as people read them: cents, or tenths of a cent below a dollar."""
    return f"${amount:.4f}" if 0 < amount < 1 else f"${amount:.2f}"


def _percent(spent: Spent) -> str:
    if spent.limit_tokens is not None:
        used = f"{spent.spent_tokens} of {spent.limit_tokens} tokens"
    else:
        used = f"{usd(spent.spent_usd)} of {usd(spent.limit_usd)}"
    where = "the session's budget" if spent.scope is Scope.SESSION else "today's budget"
    return f"{spent.fraction:.0%} of {where} spent ({used})"
