"""Running the server: what it logs, counts and tells.

- ``logs``: ``--log-level`` and ``--log-format``;
- ``metrics``: ``GET /metrics`` (Prometheus), the agents' tokens and cost among it;
- ``notify``: ``--notify-url``: a run ended, the agent waits for an answer, it failed, a
  budget is nearly or wholly spent;
- ``readiness``: ``GET /ready``;
- ``audit``: ``<data-dir>/audit.log``, who changed what (``pi-server audit``).
"""
