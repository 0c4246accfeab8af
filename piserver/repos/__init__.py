"""Repositories and what code sessions do with them.

- ``git``: git as a child process; ``github``: the GitHub REST API;
- ``catalog``: the repositories a code session can work on (``repos.json``, GitHub);
- ``checkouts``: a code session's own clone on ``pi/session-<id>``; ``localclone``: a
  local repository's clone, sharing nothing writable, and publishing its branch;
- ``servergit``: the git the server runs on a checkout, with nothing of the agent's;
- ``snapshot``, ``changes``, ``paths``: what a session changed, its file list, paths
  confined to the checkout;
- ``shipping``: commit, push, pull request.
"""
