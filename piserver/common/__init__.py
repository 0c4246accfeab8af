"""Small helpers every layer may use; nothing here imports the rest of piserver.

- ``errors``: errors that reach a client, each with a stable code;
- ``files``: crash-safe files (atomic writes, guarded reads);
- ``safefs``: reading a tree someone else controls (no link followed, regular files, bounded);
- ``outcome``: one outcome that many callers wait for;
- ``defaults``: the defaults more than one layer reads;
- ``processes``: process groups (signalled whole, TERM then KILL), start-up probes;
- ``params``: the parameter checks (one meaning of text: no NUL, no lone surrogate);
- ``httpbody``: an HTTP answer's body read up to a bound (never whole into memory);
- ``httpjson``: the JSON answers of the HTTP side;
- ``secrets``: known secret values out of text (the log's redactor and clients' messages).
"""
