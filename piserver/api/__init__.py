"""The wire methods: what each request does, over the sessions and the repositories.

- ``methods``: the method table (sessions, prompts, native tools, the server's own methods);
- ``picommands``: pi's RPC commands passed through as wire methods, their params checked;
- ``workspace``: the methods on a code session's checkout (diff, files, commit, push, PR);
- ``usage``: ``usage.report``, ``session.set_budget`` and the budget checks of prompts.
- ``handoff``: sessions from pi in a terminal and back (importable, import, export).
"""
