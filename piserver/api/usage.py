"""
The wire side of usage and budgets: ``usage.report``, ``session.set_budget``, and what
the other methods ask of them (``session.create``'s ``budgetUsd``, ``session.list``'s
``usage``, refusing a prompt with ``budget_exceeded``).
"""

from piserver.api import params as check
from piserver.common.errors import InvalidParams
from piserver.security.access import grant_of
from piserver.sessions.accounting import Accounting
from piserver.sessions.budgets import BUDGET_FIELD, Budgets, parse_budget
from piserver.sessions.usage import REPORT_KEYS, parse_day


class UsageMethods:
    """``sessions`` is the SessionManager."""

    def __init__(self, sessions, accounting: Accounting, budgets: Budgets):
        self._sessions = sessions
        self._accounting = accounting
        self._ledger = accounting.ledger
        self._budgets = budgets

    def table(self) -> dict:
        return {"usage.report": self.report, "session.set_budget": self.set_budget}

    # -- methods ----------------------------------------------------------------

    def report(self, connection, request):
        params = request.params
        by = check.string(params, "by")
        check.choice(
            params, "by", REPORT_KEYS, message=f'"by" must be one of {", ".join(REPORT_KEYS)}'
        )
        first = parse_day(params.get("from"), "from")
        last = parse_day(params.get("to"), "to")
        grant = grant_of(connection)
        keep = None
        if not grant.unrestricted:
            # A device with a narrower reach sees the rows of the sessions it may see.
            visible = {s.id for s in self._sessions.sessions.values() if grant.may_see(s)}

            def keep(key) -> bool:
                return key.session in visible

        rows = self._ledger.report(by, first, last, keep)
        return {"rows": [{"key": key, "usage": usage.to_wire()} for key, usage in rows]}

    def set_budget(self, connection, request):
        session = self._sessions.get(check.target_session_id(request))
        if BUDGET_FIELD not in request.params:
            raise InvalidParams(f'missing "{BUDGET_FIELD}" (a number of USD, or null for none)')
        self._budgets.set_session_budget(session, parse_budget(request.params[BUDGET_FIELD]))
        return self._summary(session.id, session)

    # -- hooks for the other methods ----------------------------------------------

    def budget_param(self, params: dict) -> float | None:
        return parse_budget(params.get(BUDGET_FIELD))

    def created(self, session, budget: float | None) -> None:
        if budget is not None:
            self._budgets.set_session_budget(session, budget)

    def admit(self, connection, session) -> None:
        """Before a prompt, steer or follow-up: refused when a budget is spent; else the
        run it starts is counted under the connection's device (a message into a run
        already going leaves it to the device that started it)."""
        self._budgets.admit(session)
        if not session.streaming:
            self._accounting.run_started_by(session.id, getattr(connection, "device", None))

    def with_usage(self, summaries: list[dict]) -> dict:
        """``session.list``'s result: each entry with its usage and budget, and today."""
        for entry in summaries:
            entry.update(
                self._summary(entry["sessionId"], self._sessions.sessions.get(entry["sessionId"]))
            )
        return {"sessions": summaries, "today": self._budgets.today()}

    def _summary(self, session_id: str, session) -> dict:
        return {
            "usage": self._ledger.session_total(session_id).to_wire(),
            BUDGET_FIELD: self._budgets.session_budget(session) if session is not None else None,
        }
