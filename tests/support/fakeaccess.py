"""Stand-ins for what the access guard looks at: a connection with a grant, and the
session manager's table of sessions (each with its repository and creating device)."""

import attr

from piserver.security.scopes import Grant


@attr.s
class FakeConnection:
    grant: Grant = attr.ib(factory=Grant.server_token)
    connection_id: str = attr.ib(default="c1")

    @property
    def device(self):
        return self.grant.device


@attr.s
class FakeSession:
    id: str = attr.ib()
    repo_id: str | None = attr.ib(default=None)
    device: str | None = attr.ib(default=None)
    # Ids of the extension dialogs it waits on, and the answers they got.
    dialogs: set = attr.ib(factory=set)
    answers: list = attr.ib(factory=list)

    @property
    def calls(self):
        return self

    def has_dialog(self, dialog_id):
        return dialog_id in self.dialogs

    def answer_dialog(self, connection, params):
        self.answers.append(params)


@attr.s
class FakeSessions:
    sessions: dict = attr.ib(factory=dict)

    def add(self, *sessions: FakeSession) -> "FakeSessions":
        for session in sessions:
            self.sessions[session.id] = session
        return self


@attr.s
class RecordingSink:
    """A DecisionSink that keeps each decision as a tuple."""

    decisions: list = attr.ib(factory=list)

    def decided(self, device, method, session_id, repo_id, ok, error):
        self.decisions.append((device, method, session_id, repo_id, ok, error))
