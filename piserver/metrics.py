"""
``/metrics``: the server's counters in the Prometheus text format. Nothing in
them is secret: counts of refusals and bad frames, open file descriptors.
"""

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.resource import Resource


def open_fds() -> int:
    """File descriptors this process has open (-1 where /proc does not tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class Metrics:
    """One server's metrics, in a registry of its own (tests run several servers)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.refusals = Counter(
            "pi_server_refusals", "Upgrades and requests refused, and connections failed "
            "for a broken frame (kind bad_frame), by kind", ["kind"], registry=self.registry)
        Gauge("pi_server_open_fds", "File descriptors the server process has open",
              registry=self.registry).set_function(open_fds)

    def resource(self) -> Resource:
        return MetricsResource(self.registry)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self._registry = registry

    def render_GET(self, request):
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)
