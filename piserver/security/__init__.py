"""Who may connect, what each token may do, and what never leaks.

- ``tokens``: the server token and device tokens; ``auth``: who may open ``/rpc``;
- ``scopes``: what a token may do and which sessions it sees; ``access``: the check of
  both before any handler runs;
- ``revocation``: a revoked device token ends its connections at once;
- ``origins``: which browser pages may connect; ``tls``: TLS on the one port;
- ``redact``: secrets never reach a log; ``refusals``: counted, rate-limited refusals;
- ``addresses``: who a peer is for limits and logs (IPv6 by prefix, the client behind a
  trusted reverse proxy); ``admission``: the cap on connections not yet authenticated;
- ``vapid``: the Web Push key pair; ``pushsubscriptions``: the devices' push subscriptions;
  ``pushendpoints``: no push to an internal address.
"""
