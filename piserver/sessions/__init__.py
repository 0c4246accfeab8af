"""
Sessions: a conversation with one pi agent, its working directory, the connections
attached to it and the events it streams to them.

- ``manager``: the registry of sessions: create, copy and delete, save, attach;
- ``settings``: what the server's options say of sessions (``SessionSettings``);
- ``recovery``: restoring the sessions at start, finishing what a crash interrupted;
- ``intents``: what a create or delete is about to do, kept until it is done;
- ``teardown``: the one way a session is undone (deleted, failed create, warm, recovery);
- ``session``: one session's record and live parts;
- ``parts``: giving a session its live parts (journal, stream, device calls, approvals);
- ``relay``: pi's events relayed: to the session, its approvals and calls, or its stream;
- ``catchup``: catching an attaching connection up (live, replayed or a snapshot);
- ``lifecycle``: the state machine of a session's agent (starting, stopping, crashes);
- ``agents``: what the sessions' agents are started with, room under --max-agents, idleness;
- ``aborts``: ``abort`` ends the run, stopping pi when it does not answer in time;
- ``warm``: agents started ahead of the sessions they will serve;
- ``warmsupply``: filling, refilling and emptying that pool, handing a create its agent;
- ``connections``: the connections seen, remembered for clients that resume;
- ``observer``: who hears of runs, crashes and input needed (metrics, notifications);
- ``index``: ``state.json``, the index of every session;
- ``stream``: numbering, journaling and sending a session's events;
- ``streamed``: the assistant message being streamed, rebuilt from pi's deltas;
- ``journal``: the append-only file of a session's events;
- ``seedcompat``: what the seed's iOS client reads that pi 1.x no longer sends;
- ``devicecalls``: native tool calls and extension dialogs, routed to devices;
- ``permissions``: what a session's agent may do without asking (modes, rules, grants);
- ``approvals``: tool calls put to a person, and their answers;
- ``projecttrust``: whether an agent loads its folder's pi configuration (asked of clients);
- ``journalcodec``: the bytes of the journal (segments, records, pi 0.x's compact updates);
- ``viewing``: which sessions are on screen (``session.viewing``): those get no push;
- ``usage``: what the agents cost, per session, day, model and device (``usage.json``);
- ``accounting``: each message's usage recorded in the ledger (an observer);
- ``budgets``: the daily and per-session budgets that stop a run;
- ``pifiles``: pi's own session files as untrusted input (summaries, validated copies);
- ``importable``: the pi sessions on this machine a client may import;
- ``imports``: a terminal's pi session becomes a server session, and back;
- ``export``: a server session's conversation as a pi session file.
"""

from piserver.sessions.agents import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_AGENTS
from piserver.sessions.connections import PreviousConnection
from piserver.sessions.manager import SessionManager
from piserver.sessions.session import Session
from piserver.sessions.settings import SessionSettings
from piserver.sessions.warm import DEFAULT_WARM_AGENTS

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_AGENTS",
    "DEFAULT_WARM_AGENTS",
    "PreviousConnection",
    "Session",
    "SessionManager",
    "SessionSettings",
]
