"""A fake session for sessions.approvals.Approvals: records what it is asked to do."""

import attr

from piserver.sessions.permissions import Permissions


@attr.s
class FakeApprovalHost:
    permissions_: Permissions = attr.ib(factory=Permissions)
    cwd_: str = attr.ib(default="/nonexistent/checkout")
    published: list = attr.ib(factory=list)
    sent: list = attr.ib(factory=list)
    told: list = attr.ib(factory=list)
    requests: list = attr.ib(factory=list)
    waiting: bool = attr.ib(default=False)
    stopping: bool = attr.ib(default=False)
    saved: int = attr.ib(default=0)

    def publish(self, event_type, payload, to=None):
        self.published.append((event_type, payload, to))

    def send_to_agent(self, message):
        self.sent.append(message)

    def connections(self):
        return []

    def permissions(self):
        return self.permissions_

    def cwd(self):
        return self.cwd_

    def permissions_changed(self):
        self.saved += 1

    def waiting_for_person(self, waiting):
        self.waiting = waiting

    def agent_stopping(self):
        return self.stopping

    def tell_agent_later(self, text):
        self.told.append(text)

    def requested(self, request):
        self.requests.append(request)
