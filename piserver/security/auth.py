"""
Who may open ``/rpc``: the server token or a device token, from an
``Authorization: Bearer`` header or a ``?token=`` query parameter.
"""

import attr

from piserver.security.scopes import Grant
from piserver.security.tokens import tokens_match


@attr.frozen
class Identity:
    """``device`` names the device token used; None for the server token or no auth.
    ``token_id`` identifies that device token (see ``DeviceTokenStore.identify``);
    ``grant`` is what the token may do."""

    device: str | None
    token_id: str | None = None
    grant: Grant = attr.Factory(Grant.server_token)


@attr.s(auto_exc=True)
class Unauthorized(Exception):
    reason: str = attr.ib()


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def presented_token(headers: dict[str, str], params: dict[str, list[str]]) -> str | None:
    """The token a client presented: the header wins over the query string."""
    token = bearer_token(headers.get("authorization", ""))
    if token is not None:
        return token
    values = params.get("token") or []
    if values and values[0]:
        return values[0]
    return None


@attr.s
class Authenticator:
    """``server_token`` None means authentication is off (``--no-auth``)."""

    server_token: str | None = attr.ib()
    device_tokens: object = attr.ib(default=None)

    @property
    def required(self) -> bool:
        return self.server_token is not None

    def authenticate(self, headers: dict[str, str], params: dict[str, list[str]]) -> Identity:
        if not self.required:
            return Identity(device=None)
        token = presented_token(headers, params)
        if token is None:
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>' or ?token=")
        if tokens_match(token, self.server_token):
            return Identity(device=None)
        if self.device_tokens is not None:
            found = self.device_tokens.find(token)
            if found is not None:
                return Identity(device=found.name, token_id=found.token_id, grant=found.grant)
        raise Unauthorized("invalid token")
