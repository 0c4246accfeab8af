"""
The method table: what each wire method does, in terms of the session manager.
Handlers validate their params and return a result object.
"""

from . import __version__
from .errors import InvalidParams

SERVER_NAME = "pi-server"


def _object(params: dict, key: str, required: bool = True) -> dict | None:
    value = params.get(key)
    if value is None:
        if required:
            raise InvalidParams(f'missing "{key}" (an object)')
        return None
    if not isinstance(value, dict):
        raise InvalidParams(f'"{key}" must be an object')
    return value


def _string(params: dict, key: str, required: bool = True, where: str = "") -> str | None:
    value = params.get(key)
    name = f"{where}.{key}" if where else key
    if value is None:
        if required:
            raise InvalidParams(f'missing "{name}" (a string)')
        return None
    if not isinstance(value, str):
        raise InvalidParams(f'"{name}" must be a string')
    return value


class RpcMethods:
    """Handlers are ``handler(connection, request)``; see ``table()`` for wire names."""

    def __init__(self, capabilities: dict | None = None):
        self._capabilities = {"resume": True, **(capabilities or {})}

    def table(self) -> dict:
        return {
            "hello": self.hello,
        }

    def hello(self, connection, request):
        client = _object(request.params, "client")
        name = _string(client, "name", where="client")
        version = _string(client, "version", where="client")
        connection.client = {"name": name, "version": version}
        return {
            "connectionId": connection.connection_id,
            "server": {"name": SERVER_NAME, "version": __version__},
            "capabilities": dict(self._capabilities),
        }
