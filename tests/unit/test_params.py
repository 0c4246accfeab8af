"""
Issue 22: one parameter checker. Every handler's params go through piserver.common.params
(with piserver.api.params for what only requests have); these pin its meanings.
"""

import json

import pytest

from piserver.api.params import target_session_id
from piserver.common import params as check
from piserver.common.errors import InvalidParams
from piserver.wire.envelope import Request

LONE = json.loads('"a\\ud800b"')


def refused(f, *args, **kwargs) -> str:
    with pytest.raises(InvalidParams) as caught:
        f(*args, **kwargs)
    return caught.value.message


def test_text_has_one_meaning():
    assert check.text({"k": "fine"}, "k") == "fine"
    assert "NUL" in refused(check.text, {"k": "a\x00b"}, "k")
    assert "surrogate" in refused(check.text, {"k": LONE}, "k")
    assert refused(check.text, {"k": " "}, "k", nonempty=True) == '"k" must not be empty'
    assert check.text({}, "k", required=False) is None
    assert refused(check.text, {}, "k") == 'missing "k" (a string)'


def test_strings_objects_and_where():
    assert refused(check.string, {"name": 3}, "name", where="client") == (
        '"client.name" must be a string'
    )
    assert refused(check.obj, {}, "client") == 'missing "client" (an object)'
    assert refused(check.obj, {"client": []}, "client") == '"client" must be an object'
    assert check.strings({}, "features") == []
    assert refused(check.strings, {"features": [1]}, "features") == (
        '"features" must be a list of strings'
    )


def test_numbers_booleans_and_choices():
    assert check.boolean({}, "all", True) is True
    assert refused(check.boolean, {"all": 1}, "all", True) == '"all" must be true or false'
    assert check.natural({"lastSeq": 0}, "lastSeq") == 0
    assert refused(check.natural, {"lastSeq": True}, "lastSeq")
    assert check.count({}, "n", 5, 1, 10) == 5
    assert refused(check.count, {"n": 11}, "n", 5, 1, 10) == '"n" must be an integer from 1 to 10'
    assert check.choice({}, "mode", ("a", "b"), "a") == "a"
    assert check.choice({}, "mode", ("a", "b")) is None
    assert refused(check.choice, {"mode": None}, "mode", ("a",), "a")
    assert refused(check.choice, {}, "mode", ("a",), required=True, message="m") == "m"


def test_target_session_id_prefers_params():
    request = Request(id="1", method="session.attach", params={"sessionId": "s2"}, session_id="s1")
    assert target_session_id(request) == "s2"
    assert refused(
        target_session_id, Request(id="1", method="m", params={"sessionId": 1}, session_id=None)
    )
