"""
The wire protocol as JSON Schema (``protocol.json`` beside this file): the
envelopes, each method's params and result, the payload of each event the server
makes itself. Served at ``GET /schema.json``; the test suite validates every
frame it receives against it, so it cannot drift from what the server sends.
"""

import json
from functools import cache
from importlib.resources import files

from twisted.web.resource import Resource


@cache
def schema_bytes() -> bytes:
    return files(__name__).joinpath("protocol.json").read_bytes()


def load() -> dict:
    return json.loads(schema_bytes())


class SchemaResource(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/schema+json")
        request.setHeader(b"cache-control", b"no-cache")
        return schema_bytes()
