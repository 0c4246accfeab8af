"""Reading a running server's ``/metrics`` the way Prometheus does, for tests."""

import treq
from prometheus_client.parser import text_string_to_metric_families


async def scrape(server, token=None) -> dict:
    """Every sample of ``server`` (anything with a ``port``) as
    ``{(name, (label pairs...)): value}``, parsed by prometheus_client."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await treq.get(f"http://127.0.0.1:{server.port}/metrics", headers=headers)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def moved(before, after, name, **labels) -> float:
    """How far sample ``name`` with ``labels`` moved between two scrapes."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0) - before.get(key, 0)
