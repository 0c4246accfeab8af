"""
Web Push's parts, made from the server's configuration: the VAPID key pair, the
subscriptions, the endpoint policy, who views what, the sender and its HTTP client, the
notifier and ``GET /push/key``. (The methods, ``api/push.py``, are made over these by
the service.)
"""

import attr
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from piserver.ops.notify import ATTEMPT_TIMEOUT
from piserver.ops.push import PushNotifier
from piserver.ops.pushkey import PushKeyResource
from piserver.ops.webpush import WebPushSender
from piserver.security.pushendpoints import EndpointPolicy, getaddrinfo_resolver
from piserver.security.pushsubscriptions import PUSH_SUBSCRIPTIONS_FILE, SubscriptionStore
from piserver.security.vapid import application_server_key, load_or_create_vapid
from piserver.sessions.viewing import Viewing


@attr.frozen
class Push:
    notifier: PushNotifier
    subscriptions: SubscriptionStore
    policy: EndpointPolicy
    viewing: Viewing
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


def build_push(config, reactor, device_tokens, redact, in_thread, action_urls=None) -> Push:
    """``action_urls(approval request)``: its signed allow/deny URLs (``--public-url``)."""
    vapid = load_or_create_vapid(config.data_dir)
    policy = EndpointPolicy(getaddrinfo_resolver(in_thread), config.push_allowed_endpoints)
    subscriptions = SubscriptionStore(config.data_dir / PUSH_SUBSCRIPTIONS_FILE)
    viewing = Viewing()
    sender = WebPushSender(push_http_client(reactor, config.push_ca_file), reactor, vapid, policy)
    notifier = PushNotifier(
        subscriptions,
        sender,
        viewing,
        grants=device_tokens.grants,
        redact=redact,
        action_urls=action_urls,
    )
    return Push(
        notifier, subscriptions, policy, viewing, PushKeyResource(application_server_key(vapid))
    )
