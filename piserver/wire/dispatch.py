"""
Deferred-based dispatch of parsed requests to handlers through a method table.

A handler is called as ``handler(connection, request)`` through ``maybeDeferred``
and returns (or fires with) the ``result`` object, or ``None`` for ``{}``.
Requests on one connection run concurrently: each reply goes out when its
handler finishes, so a slow call never holds up a quick one.

With a ``guard`` (security/access.py), every request is admitted by it before its
handler runs (scope and reach), and each outcome is told to it (the audit log). With
``keys`` (wire/idempotency.py), an admitted request that changes something runs at most
once per key: a repeat gets the first answer, and is not audited again.
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
    """``fallback``, when given, handles the methods that are not in ``methods``."""

    log = Logger()

    def __init__(
        self,
        methods: Mapping[str, Handler],
        fallback: Handler | None = None,
        guard=None,
        keys: IdempotencyKeys | None = None,
    ):
        self._methods = dict(methods)
        self._fallback = fallback
        self._guard = guard
        self._keys = keys

    def dispatch(self, connection, request: Request) -> Deferred:
        """
        Fire with ``(True, result_dict, repeat)`` or ``(False, RpcError, repeat)``; never
        errback. ``repeat``: the answer is the one a request with the same key got.
        """
        admission = None
        if self._guard is not None:
            try:
                admission = self._guard.admit(connection, request)
            except RpcError as refused:
                return succeed(_first(self._decided((False, refused), connection, request, None)))
            except Exception:
                self.log.failure("could not check access for {method}", method=request.method)
                return succeed((False, InternalError("internal error: see the server log"), False))
        handler = self._methods.get(request.method, self._fallback)
        if handler is None:
            error = UnknownMethod(f"unknown method {request.method!r}")
            return succeed(_first(self._decided((False, error), connection, request, admission)))
        if (
            self._keys is not None
            and request.method in IDEMPOTENT_METHODS
            and request.method in self._methods
        ):
            return self._keys.run(
                connection.device,
                request,
                lambda keyed: self._call(handler, connection, keyed, admission),
            )
        return self._call(handler, connection, request, admission).addCallback(_first)

    def _call(self, handler: Handler, connection, request: Request, admission) -> Deferred:
        """Fire with ``(ok, value)``."""
        d = maybeDeferred(handler, connection, request)
        d.addCallbacks(
            self._succeeded, self._failed, errbackArgs=(request,), callbackArgs=(request,)
        )
        d.addCallback(self._decided, connection, request, admission)
        return d

    def _decided(self, outcome, connection, request: Request, admission):
        """Tell the guard how a request ended; a failing record never loses the reply."""
        if self._guard is not None:
            try:
                self._guard.decided(connection, request, admission, *outcome)
            except Exception:
                self.log.failure("could not record {method}", method=request.method)
        return outcome

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
