"""Per-tenant concurrent-stream slots (the plan's ``concurrent_streams``)."""

from __future__ import annotations

import logging

from django.core.cache import cache
from redis.exceptions import RedisError

from tenants.models import Tenant

log = logging.getLogger(__name__)
# A crashed process cannot give its slots back; the count forgets them after this long.
SLOT_TTL_SECONDS = 6 * 3600


def _key(tenant: Tenant) -> str:
    return f"streams:open:{tenant.pk}"


def stream_slot_take(tenant: Tenant) -> bool:
    """Take one of the tenant's stream slots; False when all are in use."""
    key = _key(tenant)
    try:
        cache.add(key, 0, timeout=SLOT_TTL_SECONDS)
        held = int(cache.incr(key))
        if held > tenant.concurrent_streams:
            cache.decr(key)
            return False
        cache.touch(key, SLOT_TTL_SECONDS)
    except (RedisError, OSError, ValueError):
        log.exception("stream slot count unavailable; admitting", extra={"tenant": tenant.slug})
    return True


def stream_slot_release(tenant: Tenant) -> None:
    try:
        if int(cache.decr(_key(tenant))) < 0:
            cache.set(_key(tenant), 0, timeout=SLOT_TTL_SECONDS)
    except (RedisError, OSError, ValueError):
        log.exception("stream slot release failed", extra={"tenant": tenant.slug})
