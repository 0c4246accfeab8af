"""The wire methods: what each request does, over the sessions and the repositories.

- ``methods``: the method table (sessions, prompts, native tools, the server's own methods);
- ``params``: the one set of parameter checks every handler uses (over ``common.params``);
- ``picommands``: pi's RPC commands passed through as wire methods, their params checked;
- ``workspace``: the methods on a code session's checkout (diff, files, commit, push, PR);
- ``push``: ``push.subscribe``/``unsubscribe``/``list`` and ``session.viewing``;
- ``usage``: ``usage.report``, ``session.set_budget`` and the budget checks of prompts.
- ``handoff``: sessions from pi in a terminal and back (importable, import, export).
"""
