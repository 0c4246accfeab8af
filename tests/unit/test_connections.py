"""ConnectionMemory: what a resuming client gets back, from open and closed connections."""

from piserver.sessions.connections import ConnectionMemory, PreviousConnection


class Connection:
    def __init__(self, connection_id, native_tools=None):
        self.connection_id = connection_id
        self.native_tools = native_tools
        self._on_lost = []

    def on_lost(self, callback):
        self._on_lost.append(callback)

    def close(self):
        for callback in self._on_lost:
            callback(self)


def test_open_and_closed_connections_are_remembered_up_to_the_limit():
    attached = {"c1": frozenset({"s1"}), "c2": frozenset(), "c3": frozenset({"s3"})}
    lost = []
    memory = ConnectionMemory(lambda c: attached[c.connection_id], lost.append, limit=2)
    c1, c2, c3 = Connection("c1", ["tool"]), Connection("c2"), Connection("c3")
    assert memory.watch(c1) and not memory.watch(c1)
    assert memory.previous("c1") == PreviousConnection(["tool"], frozenset({"s1"}))
    for connection in (c2, c3):
        memory.watch(connection)
    for connection in (c1, c2, c3):
        connection.close()
    assert lost == [c1, c2, c3]
    assert memory.previous("c1") is None  # the oldest closed one is forgotten
    assert memory.previous("c3") == PreviousConnection(None, frozenset({"s3"}))
    assert memory.previous("never-seen") is None
