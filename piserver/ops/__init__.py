"""Running the server: what it logs, counts and tells.

- ``logs``: ``--log-level`` and ``--log-format``;
- ``metrics``: ``GET /metrics`` (Prometheus), the agents' tokens and cost among it;
- ``notify``: ``--notify-url``: a run ended, the agent waits for an answer, it failed, a
  budget is nearly or wholly spent;
- ``readiness``: ``GET /ready``;
- ``push``: the same happenings as Web Push to the devices that asked (``webpush`` sends
  one, ``pushkey`` serves ``GET /push/key``, ``pushwiring`` makes the parts);
- ``audit``: ``<data-dir>/audit.log``, who changed what (``pi-server audit``);
- ``signals``: SIGTERM and SIGINT handled on the reactor thread (a stop cannot deadlock).
"""
