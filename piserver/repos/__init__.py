"""Repositories and what code sessions do with them.

- ``git``: git as a child process; ``github``: the GitHub REST API;
- ``catalog``: the repositories a code session can work on (``repos.json``, GitHub);
- ``checkouts``: a code session's own worktree or clone on ``pi/session-<id>``;
- ``snapshot``, ``changes``, ``paths``: what a session changed, its file list, paths
  confined to the checkout;
- ``shipping``: commit, push, pull request.
"""
