"""
Deferred-based dispatch of parsed requests to handlers through a method table.

A handler is called as ``handler(connection, request)`` through ``maybeDeferred``
and returns (or fires with) the ``result`` object, or ``None`` for ``{}``.
Requests on one connection run concurrently: each reply goes out when its
handler finishes, so a slow call never holds up a quick one. Requests that change
something go through the idempotency keys (wire/idempotency.py) when they are given.
"""

import errno
from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from piserver.common.errors import InternalError, RpcError, StorageFull, UnknownMethod
from piserver.wire.envelope import Request
from piserver.wire.idempotency import IDEMPOTENT_METHODS, IdempotencyKeys

Handler = Callable[[object, Request], object]


class Dispatcher:
    """``fallback``, when given, handles the methods that are not in ``methods``; ``keys``,
    when given, makes the ``IDEMPOTENT_METHODS`` among them run at most once per key."""

    log = Logger()

    def __init__(
        self,
        methods: Mapping[str, Handler],
        fallback: Handler | None = None,
        keys: IdempotencyKeys | None = None,
    ):
        self._methods = dict(methods)
        self._fallback = fallback
        self._keys = keys

    @property
    def method_names(self) -> list[str]:
        return sorted(self._methods)

    def dispatch(self, connection, request: Request) -> Deferred:
        """
        Fire with ``(True, result_dict, repeat)`` or ``(False, RpcError, repeat)``; never
        errback. ``repeat``: the answer is the one a request with the same key got.
        """
        handler = self._methods.get(request.method, self._fallback)
        if handler is None:
            error = UnknownMethod(f"unknown method {request.method!r}")
            return succeed((False, error, False))
        if self._keys is not None and request.method in IDEMPOTENT_METHODS:
            if request.method in self._methods:
                return self._keys.run(
                    connection.device, request, lambda r: self._call(handler, connection, r)
                )
        return self._call(handler, connection, request).addCallback(_first)

    def _call(self, handler: Handler, connection, request: Request) -> Deferred:
        """Fire with ``(ok, value)``."""
        d = maybeDeferred(handler, connection, request)
        d.addCallbacks(
            self._succeeded, self._failed, errbackArgs=(request,), callbackArgs=(request,)
        )
        return d

    def _succeeded(self, result, request: Request):
        if result is None:
            result = {}
        if not isinstance(result, dict):
            self.log.error(
                "handler for {method} returned {kind}, not a result object",
                method=request.method,
                kind=type(result).__name__,
            )
            return (False, InternalError("internal error: see the server log"))
        return (True, result)

    def _failed(self, failure, request: Request):
        if failure.check(RpcError):
            return (False, failure.value)
        if failure.check(OSError) and failure.value.errno in (errno.ENOSPC, errno.EDQUOT):
            self.log.error(
                "{method} (request {request_id}) failed: {error}",
                method=request.method,
                request_id=request.id,
                error=failure.value.strerror,
            )
            return (False, StorageFull("the server's disk is full: try again once there is room"))
        self.log.failure(
            "unexpected error handling {method} (request {request_id})",
            failure,
            method=request.method,
            request_id=request.id,
        )
        return (False, InternalError("internal error: see the server log"))


def _first(outcome):
    ok, value = outcome
    return (ok, value, False)
