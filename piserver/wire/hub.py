"""
The hub: where WebSocket connections meet the method table.
"""

import uuid

from twisted.logger import Logger

from piserver.wire.connection import DEFAULT_SEND_BUFFER_LIMIT, Connection
from piserver.wire.dispatch import Dispatcher
from piserver.wire.ratelimit import TokenBucket


class Hub:
    log = Logger()

    def __init__(
        self,
        methods,
        new_id=lambda: str(uuid.uuid4()),
        send_buffer_limit: int = DEFAULT_SEND_BUFFER_LIMIT,
        clock=None,
        requests_per_second: float | None = None,
        redact=None,
        fallback=None,
        guard=None,
        keys=None,
    ):
        self.dispatcher = Dispatcher(methods, fallback, guard, keys)
        self._clock = clock
        self._requests_per_second = requests_per_second
        self._redact = redact
        self._new_id = new_id
        self._send_buffer_limit = send_buffer_limit
        self.connections: dict[str, Connection] = {}

    def connect(
        self,
        sink,
        peer: str = "",
        device: str | None = None,
        device_token_id: str | None = None,
        grant=None,
    ) -> Connection:
        requests = None
        if self._requests_per_second:
            # Bursts of twice the rate: a client catching up after a reconnect is not refused.
            requests = TokenBucket(
                self._requests_per_second, 2 * self._requests_per_second, self._clock
            )
        connection = Connection(
            self._new_id(),
            self.dispatcher,
            sink,
            peer=peer,
            device=device,
            send_buffer_limit=self._send_buffer_limit,
            requests=requests,
            redact=self._redact,
        )
        connection.device_token_id = device_token_id
        if grant is not None:
            connection.grant = grant
        self.connections[connection.connection_id] = connection
        connection.on_lost(self._forget)
        self.log.info(
            "connection {connection_id} opened from {peer} device={device}",
            connection_id=connection.connection_id,
            peer=peer,
            device=device,
        )
        return connection

    def _forget(self, connection: Connection) -> None:
        self.connections.pop(connection.connection_id, None)
        self.log.info("connection {connection_id} closed", connection_id=connection.connection_id)
