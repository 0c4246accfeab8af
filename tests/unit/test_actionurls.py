"""Signed action URLs: bound to subject, action and expiry; altered or expired: refused."""

import os
import stat

import pytest
from twisted.internet.task import Clock

from piserver.security.actionurls import (
    KEY_FILE,
    ActionSigner,
    RefusedToken,
    load_or_create_key,
)


def test_sign_verify_alter_expire(tmp_path):
    clock = Clock()
    clock.advance(1000)
    signer = ActionSigner(load_or_create_key(tmp_path), clock)
    token = signer.sign("approval-1", "allow", 1060)
    action = signer.verify(token)
    assert (action.subject, action.action, action.expires) == ("approval-1", "allow", 1060)
    payload, mac = token.split(".")
    other = signer.sign("approval-1", "deny", 1060).split(".")[0]
    # Any changed character is refused, the last one too (whose low bits base64 leaves spare).
    for index in range(len(token)):
        changed = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
        with pytest.raises(RefusedToken):
            signer.verify(changed)
    for bad in (f"{other}.{mac}", f"{payload}.{mac}=", "x", ""):
        with pytest.raises(RefusedToken):
            signer.verify(bad)
    with pytest.raises(RefusedToken):
        ActionSigner(os.urandom(32), clock).verify(token)
    clock.advance(60)
    with pytest.raises(RefusedToken, match="expired"):
        signer.verify(token)


def test_the_key_is_made_once_and_private(tmp_path):
    key = load_or_create_key(tmp_path)
    assert len(key) == 32 and load_or_create_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
