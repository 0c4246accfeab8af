"""
Issue 21 point 14: a lone surrogate (valid JSON, not UTF-8) in a prompt or a session
name is invalid_params from the one text check, before pi or state.json sees it.
"""

import json

import pytest
import pytest_twisted

from piserver.api.methods import RpcMethods
from piserver.api.picommands import TYPED
from piserver.common.errors import InvalidParams
from piserver.wire.envelope import Request


class Sessions:
    """Records what reaches the session layer."""

    def __init__(self):
        self.calls = []

    def get(self, session_id):
        return session_id

    async def prompt(self, session, message, images, behavior):
        self.calls.append(("prompt", message))

    async def command(self, session, command, **fields):
        self.calls.append((command, fields))

    def rename(self, session, name):
        self.calls.append(("rename", name))


LONE = json.loads('"a\\ud800b"')


@pytest.mark.parametrize(
    "method, params",
    [("prompt", {"message": LONE}), ("set_session_name", {"name": LONE})],
)
@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_is_invalid_params(method, params):
    sessions = Sessions()
    handler = getattr(RpcMethods(sessions=sessions), method)
    with pytest.raises(InvalidParams, match="valid Unicode"):
        await handler(None, Request("r1", method, params, "s1"))
    assert sessions.calls == []


@pytest_twisted.ensureDeferred
async def test_ordinary_text_still_passes():
    sessions = Sessions()
    methods = RpcMethods(sessions=sessions)
    await methods.set_session_name(None, Request("r1", "set_session_name", {"name": "é ✓"}, "s1"))
    assert ("rename", "é ✓") in sessions.calls


def test_pi_command_text_fields_use_the_same_check():
    with pytest.raises(InvalidParams, match="valid Unicode"):
        TYPED["steer"].fields_from({"message": LONE})
