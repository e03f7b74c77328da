"""Who is calling: the client address and scheme, honouring ``X-Forwarded-*`` only from a
trusted proxy.

Servers (gunicorn, uvicorn, daphne) take the peer from the socket and pass the headers on
untouched; this module is the one place that decides whether to believe them, for every
server alike: only when ``TRUSTED_PROXY_COUNT`` says proxies are in front, and only when the
peer is one of ``TRUSTED_PROXY_IPS``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest

FORWARDED_HEADERS = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_FORWARDED",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(peers: tuple[str, ...]) -> tuple[Network, ...] | None:
    """The trusted peers as networks; None: any peer ("*")."""
    if "*" in peers:
        return None
    return tuple(ipaddress.ip_network(p) for p in peers)


def proxied(meta: Mapping[str, Any]) -> bool:
    """Whether this request's forwarded headers come from a trusted proxy."""
    if settings.TRUSTED_PROXY_COUNT <= 0:
        return False
    networks = _networks(tuple(settings.TRUSTED_PROXY_IPS))
    if networks is None:
        return True
    try:
        peer = ipaddress.ip_address(str(meta.get("REMOTE_ADDR") or ""))
    except ValueError:
        return False  # a Unix socket or no peer at all: nothing to vouch for the headers
    return any(peer in net for net in networks)


def client_ip(request: HttpRequest) -> str:
    """The caller's IP address.

    Behind trusted proxies (``TRUSTED_PROXY_COUNT = n``) the n-th address from the right of
    ``X-Forwarded-For`` is the client: each trusted proxy appends the address it saw, so
    anything further left was written by the client and cannot be trusted.
    """
    remote = str(request.META.get("REMOTE_ADDR") or "unknown")
    if not proxied(request.META):
        return remote
    hops = settings.TRUSTED_PROXY_COUNT
    forwarded = [a.strip() for a in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    forwarded = [a for a in forwarded if a]
    if len(forwarded) >= hops:
        return forwarded[-hops]
    return forwarded[0] if forwarded else remote


def drop_untrusted_forwarded_headers(request: HttpRequest) -> None:
    """Remove ``X-Forwarded-*`` a client sent itself, so nothing later believes them (the
    scheme Django reads through ``SECURE_PROXY_SSL_HEADER`` above all)."""
    if not proxied(request.META):
        for name in FORWARDED_HEADERS:
            request.META.pop(name, None)
