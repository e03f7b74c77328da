"""Reads of tenants and keys; key verification is the hot path of every API request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cachetools import TTLCache
from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework import exceptions

from tenants.models import Tenant, TenantAPIKey, parse_key

LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass
class KeyContext:
    """What a request knows about the key that authenticated it. Holds no secret."""

    key_id: str
    prefix: str
    name: str
    hashed_key: str
    tenant: Tenant
    scopes: frozenset[str]
    expiry_date: datetime | None
    revoked: bool
    requests_per_minute: int | None
    last_used_at: datetime | None = field(default=None)
    via_token: bool = False

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def check_usable(self) -> None:
        """401 for a revoked or expired key or an inactive tenant."""
        if self.revoked:
            raise exceptions.AuthenticationFailed("API key has been revoked.")
        if self.expiry_date is not None and self.expiry_date <= timezone.now():
            raise exceptions.AuthenticationFailed("API key has expired.")
        if not self.tenant.is_active:
            raise exceptions.AuthenticationFailed("Tenant is inactive.")


# Verified rows, per process, by prefix. A revocation clears the entry in the process that made
# it (tenants.signals) and reaches the others within API_KEY_CACHE_SECONDS.
_cache: TTLCache[str, KeyContext] = TTLCache(maxsize=10_000, ttl=settings.API_KEY_CACHE_SECONDS)
_cache_lock = threading.Lock()


def forget_key(prefix: str) -> None:
    with _cache_lock:
        _cache.pop(prefix, None)


def forget_tenant(tenant_id: int) -> None:
    with _cache_lock:
        for prefix in [p for p, ctx in _cache.items() if ctx.tenant.pk == tenant_id]:
            _cache.pop(prefix, None)


def _load(prefix: str) -> KeyContext | None:
    row = TenantAPIKey.objects.select_related("tenant").filter(prefix=prefix).first()
    if row is None:
        return None
    return KeyContext(
        key_id=row.pk,
        prefix=row.prefix,
        name=row.name,
        hashed_key=row.hashed_key,
        tenant=row.tenant,
        scopes=frozenset(row.scopes),
        expiry_date=row.expiry_date,
        revoked=row.revoked,
        requests_per_minute=row.requests_per_minute,
        last_used_at=row.last_used_at,
    )


class NotCached(Exception):
    """Verifying this credential needs the database, which :func:`cache_only` forbids."""


_cache_only: ContextVar[bool] = ContextVar("tenants_key_cache_only", default=False)


@contextmanager
def cache_only() -> Iterator[None]:
    """Verify credentials from the process cache alone: where a query would be needed (a key
    not cached, its ``last_used_at`` due), :class:`NotCached` is raised instead. For code on
    an event loop, which must not block on the database (the unary front door)."""
    token = _cache_only.set(True)
    try:
        yield
    finally:
        _cache_only.reset(token)


def key_context(prefix: str) -> KeyContext | None:
    """The key with this prefix, from the process cache or one query."""
    with _cache_lock:
        ctx = _cache.get(prefix)
    if ctx is None:
        if _cache_only.get():
            raise NotCached(prefix)
        ctx = _load(prefix)
        if ctx is not None:
            with _cache_lock:
                _cache[prefix] = ctx
    return ctx


def key_verify(raw: str) -> KeyContext:
    """The context of a presented API key, or AuthenticationFailed. One SHA-512, no query
    while the key is cached."""
    prefix = parse_key(raw)
    if prefix is None:
        raise exceptions.AuthenticationFailed("Malformed API key.")
    ctx = key_context(prefix)
    if ctx is None or not TenantAPIKey.objects.key_generator.verify(raw, ctx.hashed_key):
        raise exceptions.AuthenticationFailed("Invalid API key.")
    ctx.check_usable()
    _touch(ctx)
    return ctx


def _touch(ctx: KeyContext) -> None:
    # last_used_at at one-minute resolution: one UPDATE a minute per key and process, not one
    # per request.
    now = timezone.now()
    if ctx.last_used_at is None or now - ctx.last_used_at >= LAST_USED_RESOLUTION:
        if _cache_only.get():
            raise NotCached(ctx.prefix)
        ctx.last_used_at = now
        TenantAPIKey.objects.filter(pk=ctx.key_id).update(last_used_at=now)


def keys_of_tenant(tenant: Tenant) -> QuerySet[TenantAPIKey]:
    return TenantAPIKey.objects.filter(tenant=tenant).order_by("-created")
