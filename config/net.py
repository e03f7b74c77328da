"""Who is calling: the client address, honouring X-Forwarded-For only behind trusted proxies."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """The caller's IP address.

    With ``TRUSTED_PROXY_COUNT = n`` the n-th address from the right of ``X-Forwarded-For`` is
    the client: each trusted proxy appends the address it saw, so anything further left was
    written by the client and cannot be trusted.
    """
    remote = str(request.META.get("REMOTE_ADDR") or "unknown")
    hops = settings.TRUSTED_PROXY_COUNT
    if hops <= 0:
        return remote
    forwarded = [a.strip() for a in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    forwarded = [a for a in forwarded if a]
    if len(forwarded) >= hops:
        return forwarded[-hops]
    return forwarded[0] if forwarded else remote
