"""pi-server: a WebSocket server that drives the pi coding agent.

The code is in layers; a module imports only its own package and the layers below it
(``tests/unit/test_layers.py`` enforces it; ``docs/architecture.md`` draws it):

1. entry points, here: ``tap`` (``twistd piserver``: its options and service), ``cli``
   (``pi-server``), ``tokencli`` (``pi-server token``), ``sessioncli`` (``pi-server session
   export``), ``config`` (the
   options resolved and checked at start: ``ServerConfig``), ``service`` (the service tree wired
   from it);
2. ``api`` (the wire methods), ``web`` (the HTTP site and the web client), ``ops`` (logs,
   metrics, notifications, readiness);
3. ``sessions`` (the registry of sessions, their agents' lifecycle, event streams, journals);
4. ``wire`` (the envelope, dispatch, one connection, the Autobahn adapter) and ``schema``
   (the protocol as JSON Schema);
5. ``agents`` (a pi process and its protocol, the supervisor, launchers, the bundled
   extension and its contract, the model catalog), ``repos`` (git, GitHub, checkouts, what a
   session changed and shipping it), ``security`` (tokens, auth, origins, TLS, redaction,
   refusals, revocation);
6. ``common`` (errors with stable codes, crash-safe files, one-shot outcomes).
"""

__version__ = "0.1.0"
