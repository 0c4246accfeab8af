"""
Sessions: a conversation with one pi agent, its working directory, the connections
attached to it and the events it streams to them.

- ``manager``: the registry of sessions, their persistence, create, delete, attach;
- ``stream``: numbering, journaling and sending a session's events;
- ``journal``: the append-only file of a session's events.
"""

from .manager import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_AGENTS,
    PreviousConnection,
    Session,
    SessionManager,
)

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_AGENTS",
    "PreviousConnection",
    "Session",
    "SessionManager",
]
