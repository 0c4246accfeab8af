"""
Sessions: a conversation with one pi agent, its working directory, the connections
attached to it and the events it streams to them.

- ``manager``: the registry of sessions, their persistence, create, delete, attach;
- ``session``: one session's record and live parts;
- ``lifecycle``: the state machine of a session's agent (starting, stopping, crashes);
- ``agents``: what the sessions' agents are started with, room under --max-agents, idleness;
- ``warm``: agents started ahead of the sessions they will serve;
- ``connections``: the connections seen, remembered for clients that resume;
- ``observer``: who hears of runs, crashes and input needed (metrics, notifications);
- ``index``: ``state.json``, the index of every session;
- ``stream``: numbering, journaling and sending a session's events;
- ``journal``: the append-only file of a session's events;
- ``journalcodec``: the bytes of the journal (segments, records, pi 0.x's compact updates);
- ``viewing``: which sessions are on screen (``session.viewing``): those get no push;
- ``usage``: what the agents cost, per session, day, model and device (``usage.json``);
- ``budgets``: the daily and per-session budgets that stop a run.
"""

from piserver.sessions.agents import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_AGENTS
from piserver.sessions.connections import PreviousConnection
from piserver.sessions.manager import SessionManager
from piserver.sessions.session import Session
from piserver.sessions.warm import DEFAULT_WARM_AGENTS

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_AGENTS",
    "DEFAULT_WARM_AGENTS",
    "PreviousConnection",
    "Session",
    "SessionManager",
]
