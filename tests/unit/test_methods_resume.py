"""hello's resume: per-session outcomes, and what a resumed connection takes over."""

import attr
from twisted.internet.defer import Deferred

from piserver.api.methods import RpcMethods
from piserver.common.errors import TooManySessions
from piserver.sessions import PreviousConnection
from piserver.wire.envelope import Request

TOOLS = [{"name": "get_location", "description": "where", "parameters": {"type": "object"}}]


@attr.s
class Connection:
    connection_id: str = attr.ib(default="new")
    native_tools = None
    features = frozenset()
    client = None
    event_mode = "full"


class Stream:
    def is_attached(self, connection):
        return False


@attr.s(eq=False)
class Session:
    stream = Stream()


class Sessions:
    def __init__(self, previous=None):
        self.sessions = {"a": Session(), "b": Session(), "c": Session()}
        self._previous = previous
        self.attached = []

    def previous(self, connection_id):
        return self._previous if connection_id == "old" else None

    def watch(self, connection):
        pass

    def use_native_tools_of(self, connection, session):
        pass

    async def attach(self, connection, session, exclusive, last_seq):
        if session is self.sessions["b"]:
            raise TooManySessions("16 agents are running")
        self.attached.append(session)
        return "replayed"


def hello(methods, connection, **params):
    request = Request(
        id="1",
        method="hello",
        session_id=None,
        params={"client": {"name": "pi-ios", "version": "1"}, **params},
    )
    result = []
    Deferred.fromCoroutine(methods.hello(connection, request)).addBoth(result.append)
    [answer] = result
    if not isinstance(answer, dict):
        answer.raiseException()
    return answer


def test_a_session_that_cannot_be_resumed_does_not_fail_the_hello():
    sessions = Sessions()
    result = hello(
        RpcMethods(sessions=sessions),
        Connection(),
        resume={"connectionId": "unknown", "lastSeqBySession": {"a": 1, "b": 2, "gone": 3}},
    )
    assert result["resumed"] == {"a": "replayed", "b": "failed", "gone": "not_found"}
    assert result["resumeErrors"] == {
        "b": {"code": "too_many_sessions", "message": "16 agents are running"}
    }


def test_a_resumed_connection_keeps_its_tools_and_only_its_sessions():
    sessions = Sessions(PreviousConnection(TOOLS, frozenset({"a"})))
    connection = Connection()
    result = hello(
        RpcMethods(sessions=sessions),
        connection,
        resume={"connectionId": "old", "lastSeqBySession": {"a": 1, "c": 0}},
    )
    assert connection.native_tools == TOOLS
    assert result["resumed"] == {"a": "replayed", "c": "not_attached"}
    assert sessions.attached == [sessions.sessions["a"]]


def test_tools_declared_again_win_over_the_old_ones():
    sessions = Sessions(PreviousConnection(TOOLS, frozenset()))
    connection = Connection()
    hello(
        RpcMethods(sessions=sessions),
        connection,
        nativeTools=[],
        resume={"connectionId": "old", "lastSeqBySession": {}},
    )
    assert connection.native_tools == []
