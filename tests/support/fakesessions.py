"""
A stand-in for the session manager as budgets see it (``sessions.budgets.SessionControl``):
sessions with a ``budget_usd`` and a ``streaming`` flag, and what was published,
commanded and saved.
"""

import attr
from twisted.internet import defer


@attr.s(eq=False)
class FakeSession:
    id: str = attr.ib()
    budget_usd: float | None = attr.ib(default=None)
    streaming: bool = attr.ib(default=False)
    name: str | None = attr.ib(default=None)
    # What a device's reach looks at (security.scopes.Grant.may_see).
    repo_id: str | None = attr.ib(default=None)
    device: str | None = attr.ib(default=None)


class FakeSessions:
    def __init__(self, *session_ids: str):
        self.sessions = {i: FakeSession(i) for i in session_ids}
        self.published: list[tuple[str, str, dict]] = []
        self.commands: list[tuple[str, str]] = []
        self.saved: list[str] = []

    def get(self, session_id):
        return self.sessions[session_id]

    def publish(self, session, event_type: str, payload: dict) -> None:
        self.published.append((session.id, event_type, payload))

    async def command(self, session, command: str, /, **fields):
        self.commands.append((session.id, command))
        await defer.succeed(None)
        return {}

    async def abort(self, session) -> dict:
        return await self.command(session, "abort")

    def save(self, session) -> None:
        self.saved.append(session.id)

    def events(self, event_type: str) -> list[tuple[str, dict]]:
        return [(sid, payload) for sid, kind, payload in self.published if kind == event_type]
