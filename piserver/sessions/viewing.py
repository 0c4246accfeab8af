"""
Which sessions someone is looking at: a web client says ``session.viewing {sessionId,
visible}`` when a session comes on screen or leaves it (the Page Visibility API), and
push notifications for a session that is visible on some connection are left out.
Only visible counts: a page open in a background tab or a locked phone is not looking.
A connection that goes away stops viewing everything.
"""


class Viewing:
    def __init__(self):
        # connection id -> the ids of the sessions visible on it.
        self._visible: dict[str, set[str]] = {}

    def set(self, connection, session_id: str, visible: bool) -> None:
        sessions = self._visible.get(connection.connection_id)
        if visible:
            if sessions is None:
                sessions = self._visible[connection.connection_id] = set()
                connection.on_lost(lambda gone: self._visible.pop(gone.connection_id, None))
            sessions.add(session_id)
        elif sessions is not None:
            sessions.discard(session_id)

    def is_visible(self, session_id: str) -> bool:
        return any(session_id in sessions for sessions in self._visible.values())
