"""Small helpers every layer may use; nothing here imports the rest of piserver.

- ``errors``: errors that reach a client, each with a stable code;
- ``files``: crash-safe files (atomic writes, guarded reads) and ``state.json``;
- ``outcome``: one outcome that many callers wait for.
"""
