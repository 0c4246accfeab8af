"""
The wire methods that move conversations between pi in a terminal and the server:
``sessions.importable``, ``session.import`` and ``session.export`` (see
piserver.sessions.imports).
"""

from piserver.api import params as check
from piserver.common.errors import InvalidParams
from piserver.sessions.imports import IMPORT_MODES


class HandoffMethods:
    """``importer`` a SessionImporter; ``sessions`` the SessionManager."""

    def __init__(self, importer, sessions):
        self._importer = importer
        self._sessions = sessions

    def table(self) -> dict:
        return {
            "sessions.importable": self.importable,
            "session.import": self.import_session,
            "session.export": self.export,
        }

    async def importable(self, connection, request):
        cursor = check.string(request.params, "cursor", required=False)
        return await self._importer.listing(cursor)

    async def import_session(self, connection, request):
        params = request.params
        import_id = check.string(params, "importId")
        if not import_id:
            raise InvalidParams('"importId" must not be empty (see sessions.importable)')
        mode = check.choice(params, "mode", IMPORT_MODES, "auto", '"mode" must be "auto" or "chat"')
        with_changes = check.boolean(params, "withChanges", False)
        return await self._importer.import_session(connection, import_id, mode, with_changes)

    async def export(self, connection, request):
        session = self._sessions.get(check.target_session_id(request))
        return await self._importer.export(session)
