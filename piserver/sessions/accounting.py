"""
Who spent what: each assistant message's usage (a session observer's ``usage_reported``)
recorded in the usage ledger under its session, day, model and the device whose prompt
started the run.
"""

from twisted.logger import Logger

from piserver.sessions.observer import SessionObserver
from piserver.sessions.usage import SERVER_DEVICE, Usage, UsageLedger


class Accounting(SessionObserver):
    """A session observer (``usage_reported``): records each assistant message's usage
    under the device that started the run, then calls ``on_recorded(session)`` (budgets)."""

    log = Logger()

    def __init__(self, ledger: UsageLedger):
        self.ledger = ledger
        self._started_by: dict[str, str] = {}
        self.on_recorded = []

    def run_started_by(self, session_id: str, device: str | None) -> None:
        """A prompt from ``device`` (None: the server token) for the session's next run."""
        self._started_by[session_id] = device or SERVER_DEVICE

    def usage_reported(self, session, model: str, usage: Usage) -> None:
        device = self._started_by.get(session.id, SERVER_DEVICE)
        self.ledger.record(session.id, device, model, usage)
        for hook in self.on_recorded:
            hook(session)
