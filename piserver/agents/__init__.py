"""pi agents: the ``pi --mode rpc`` processes the server drives.

- ``protocol``: one pi process over its stdin/stdout JSONL protocol;
- ``supervisor``: the service that owns every pi process;
- ``launchers``: how a process starts (local, bubblewrap sandbox, command template);
- ``version``: which pi and Node.js, checked at start;
- ``agentdir``: each session's own pi agent dir;
- ``dotenv``: the data dir's ``.env`` handed to every agent;
- ``models``: the models pi can use, from a helper agent;
- ``nativetools``: the bundled extension (``extensions/session.ts``) and its wire contract:
  native tool calls and extension dialogs;
- ``projecttrust``: pi's project trust: what needs it, the server's policy, pi's override.
"""
