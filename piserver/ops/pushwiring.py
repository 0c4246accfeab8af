"""
Web Push's parts, made from the server's configuration: the VAPID key pair, the
subscriptions, the endpoint policy, the sender and its HTTP client, the notifier, the
``push.*``/``session.viewing`` methods and ``GET /push/key``.
"""

import attr
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from ..api.push import PushMethods
from ..notify import ATTEMPT_TIMEOUT
from ..security.pushendpoints import EndpointPolicy, getaddrinfo_resolver
from ..security.vapid import application_server_key, load_or_create_vapid
from ..sessions.session import iso_time
from ..sessions.viewing import Viewing
from .push import PushNotifier
from .pushkey import PushKeyResource
from .pushsubscriptions import PUSH_SUBSCRIPTIONS_FILE, SubscriptionStore
from .webpush import WebPushSender


@attr.frozen
class Push:
    notifier: PushNotifier
    methods: PushMethods
    key_resource: PushKeyResource


def push_http_client(reactor, ca_file=None) -> HTTPClient:
    """treq over an Agent whose connections each push's timeout bounds; with ``ca_file``
    the push service's certificate must come from that CA (and no other)."""
    policy = BrowserLikePolicyForHTTPS()
    if ca_file is not None:
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(ca_file.read_bytes()))
    return HTTPClient(
        Agent(
            reactor,
            contextFactory=policy,
            connectTimeout=ATTEMPT_TIMEOUT,
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
    )


def build_push(config, reactor, sessions, device_tokens, redact, in_thread) -> Push:
    vapid = load_or_create_vapid(config.data_dir)
    policy = EndpointPolicy(getaddrinfo_resolver(in_thread), config.push_allowed_endpoints)
    subscriptions = SubscriptionStore(config.data_dir / PUSH_SUBSCRIPTIONS_FILE)
    viewing = Viewing()
    sender = WebPushSender(push_http_client(reactor, config.push_ca_file), reactor, vapid, policy)
    notifier = PushNotifier(
        subscriptions, sender, viewing, valid_owners=device_tokens.token_ids, redact=redact
    )
    methods = PushMethods(
        subscriptions,
        policy,
        viewing,
        sessions,
        now=lambda: iso_time(reactor.seconds()),
        prune=notifier.prune,
    )
    return Push(notifier, methods, PushKeyResource(application_server_key(vapid)))
