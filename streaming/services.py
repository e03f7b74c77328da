"""Per-tenant concurrent-stream slots (the plan's ``concurrent_streams``) as leases that lapse.

A slot is a lease: a member of a per-tenant sorted set scored by its expiry (Redis; a dict in the
embedded process). The process holding it renews every lease it holds in one round trip every
``STREAM_SLOT_LEASE_SECONDS / 3``; a process that dies stops renewing, and its slots lapse
``STREAM_SLOT_LEASE_SECONDS`` later instead of leaking until a counter's TTL (the old
counter could not tell a crashed holder from a live one). Taking a slot sweeps lapsed leases
first, so the count is always of live holders.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from tenants.models import Tenant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """One held slot. ``tracked``: false when the store was unreachable and the stream was let
    through without a lease (nothing to renew or release)."""

    tenant_id: int
    slot: str
    tracked: bool = True


# Sweep lapsed leases, refuse when full, else add: one step, so two takers cannot both see one
# free slot (the race a read-then-write would have).
# KEYS[2] holds every tenant's leases, for the platform's count of active streams.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""


class SlotStore:
    """The lease table: Redis (``url`` given) or process memory (the embedded default)."""

    def __init__(
        self,
        url: str | None,
        prefix: str,
        *,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._prefix = prefix
        self._lock = threading.Lock()
        self._local: dict[int, dict[str, float]] = {}
        self._redis: Any = None
        if url:
            import redis

            self._redis = redis.Redis.from_url(
                url,
                socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
                socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
            )
            self._take = self._redis.register_script(_TAKE)

    def _key(self, tenant_id: int) -> str:
        return f"{self._prefix}:streams:slots:{tenant_id}"

    def _all_key(self) -> str:
        return f"{self._prefix}:streams:slots:all"

    def take(self, tenant_id: int, limit: int) -> Lease | None:
        slot, now = uuid.uuid4().hex, self._clock()
        until = now + self.lease_seconds
        if self._redis is None:
            with self._lock:
                held = self._local.setdefault(tenant_id, {})
                for lapsed in [s for s, t in held.items() if t <= now]:
                    del held[lapsed]
                if len(held) >= limit:
                    return None
                held[slot] = until
            return Lease(tenant_id, slot)
        ttl = int(self.lease_seconds) + 60
        keys = [self._key(tenant_id), self._all_key()]
        taken = self._take(keys=keys, args=[now, until, limit, slot, ttl])
        return Lease(tenant_id, slot) if taken else None

    def renew(self, leases: list[Lease]) -> None:
        """Push every lease's expiry forward: one pipeline however many are held."""
        tracked = [lease for lease in leases if lease.tracked]
        if not tracked:
            return
        until = self._clock() + self.lease_seconds
        if self._redis is None:
            with self._lock:
                for lease in tracked:
                    self._local.setdefault(lease.tenant_id, {})[lease.slot] = until
            return
        pipe = self._redis.pipeline(transaction=False)
        ttl = int(self.lease_seconds) + 60
        for lease in tracked:
            pipe.zadd(self._key(lease.tenant_id), {lease.slot: until})
            pipe.expire(self._key(lease.tenant_id), ttl)
            pipe.zadd(self._all_key(), {lease.slot: until})
        pipe.expire(self._all_key(), ttl)
        pipe.execute()

    def release(self, lease: Lease) -> None:
        if not lease.tracked:
            return
        if self._redis is None:
            with self._lock:
                self._local.get(lease.tenant_id, {}).pop(lease.slot, None)
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(self._key(lease.tenant_id), lease.slot)
        pipe.zrem(self._all_key(), lease.slot)
        pipe.execute()

    def held(self, tenant_id: int) -> int:
        """Live leases of the tenant (all processes)."""
        now = self._clock()
        if self._redis is None:
            with self._lock:
                return sum(1 for t in self._local.get(tenant_id, {}).values() if t > now)
        return int(self._redis.zcount(self._key(tenant_id), f"({now}", "+inf"))

    def total(self) -> int:
        """Live leases of every tenant: the platform's active streams."""
        now = self._clock()
        if self._redis is None:
            with self._lock:
                return sum(1 for held in self._local.values() for t in held.values() if t > now)
        self._redis.zremrangebyscore(self._all_key(), "-inf", now)
        return int(self._redis.zcard(self._all_key()))


class LeaseKeeper:
    """Renews the leases this process holds, from one daemon thread, every third of the lease
    time. Dies with the process, which is the point: then the leases lapse."""

    def __init__(self, store: SlotStore) -> None:
        self.store = store
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, lease: Lease) -> None:
        with self._lock:
            self._held[lease.slot] = lease
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="stream-slot-leases", daemon=True
                )
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        with self._lock:
            self._held.pop(lease.slot, None)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._held.values())

    def renew_now(self) -> None:
        try:
            self.store.renew(self.held())
        except (RedisError, OSError):
            log.exception("renewing %d stream slot leases failed", len(self._held))

    def _run(self) -> None:
        while True:
            time.sleep(self.store.lease_seconds / 3)
            self.renew_now()


_keepers: dict[str, LeaseKeeper] = {}
_keeper_lock = threading.Lock()


def lease_keeper() -> LeaseKeeper:
    """The process's keeper over the configured store (Redis with REDIS_URL, else memory).
    The store lives in the cache's namespace (its key prefix and location): one store in a
    deployment, and one per test where the test suite isolates the cache per test."""
    cache = settings.CACHES["default"]
    prefix = str(cache.get("KEY_PREFIX") or settings.REDIS_KEY_PREFIX)
    namespace = f"{prefix}|{cache.get('LOCATION', '')}"
    with _keeper_lock:
        keeper = _keepers.get(namespace)
        if keeper is None:
            store = SlotStore(
                settings.REDIS_URL or None,
                prefix,
                lease_seconds=settings.STREAM_SLOT_LEASE_SECONDS,
            )
            keeper = _keepers[namespace] = LeaseKeeper(store)
        return keeper


def stream_slot_take(tenant: Tenant) -> Lease | None:
    """Take one of the tenant's stream slots, held (renewed) until released or this process
    dies; None when all are in use. With the store unreachable the stream is let through
    (an untracked lease) and the failure logged: a slot limit protects capacity, and a dead
    Redis stops the streams anyway."""
    keeper = lease_keeper()
    try:
        lease = keeper.store.take(tenant.pk, tenant.concurrent_streams)
    except (RedisError, OSError):
        log.exception("stream slots unavailable; admitting", extra={"tenant": tenant.slug})
        return Lease(tenant.pk, "", tracked=False)
    if lease is not None:
        keeper.hold(lease)
    return lease


def stream_slot_release(lease: Lease) -> None:
    keeper = lease_keeper()
    keeper.drop(lease)
    try:
        keeper.store.release(lease)
    except (RedisError, OSError):
        log.exception("stream slot release failed; it lapses by itself")


def stream_slots_held(tenant_id: int) -> int:
    return lease_keeper().store.held(tenant_id)


def stream_slots_total() -> int:
    return lease_keeper().store.total()
