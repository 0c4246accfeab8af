"""Who may connect and what never leaks.

- ``tokens``: the server token and device tokens; ``auth``: who may open ``/rpc``;
- ``revocation``: a revoked device token ends its connections at once;
- ``origins``: which browser pages may connect; ``tls``: TLS on the one port;
- ``redact``: secrets never reach a log; ``refusals``: counted, rate-limited refusals.
"""
