"""
The server's defaults that more than one layer reads: the twistd options (tap.py), the
resolved configuration (config.py) and the modules that fall back on them when a caller
gives no value. Here, below every layer, so that none of them imports an entry point.
"""

DEFAULT_PORT = 3141
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
# Seconds a client may take to send its upgrade request (and the HTTP idle limit).
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
# A ping every 20 s, answered within 20 s: a phone that vanished is dropped in under a minute.
DEFAULT_KEEPALIVE_INTERVAL = 20.0
DEFAULT_KEEPALIVE_TIMEOUT = 20.0
DEFAULT_MAX_CONNECTIONS = 100
# Connections one source address may have open that are still sending their request.
DEFAULT_MAX_PENDING_PER_ADDRESS = 16
# Seconds a device's idempotency keys are remembered (wire/idempotency.py).
DEFAULT_IDEMPOTENCY_WINDOW = 24 * 3600.0
