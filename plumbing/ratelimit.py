"""Rate limiting: fixed-window counters with RateLimit-* headers and a Redis-down policy.

The counters are django-ratelimit's (same keys, same staggered windows, in the ``default``
cache, so every web process shares them); this module adds what it lacks for an API: the
numbers for the ``RateLimit-*`` headers, a 429 instead of its 403, one decision for a dead
counter store (``RATELIMIT_FAIL_OPEN``: let requests through and log, or refuse with 503), and
speed: on Redis, all the counters of one step (:func:`hit_many`: tenant, key and monthly quota,
or the per-IP counter) are counted in ONE round trip (a Lua script: ``INCR`` + ``EXPIRE … NX``
each) instead of django-ratelimit's two or three round trips per counter. Other caches (the
embedded default's local memory) go through django-ratelimit itself.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.redis import RedisCache
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest
from django_ratelimit.core import (
    ALL,
    EXPIRATION_FUDGE,
    _get_window,
    _make_cache_key,
    _split_rate,
    get_usage,
)
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class LimiterUnavailable(Exception):
    """The counter store cannot be reached and RATELIMIT_FAIL_OPEN is off."""


@dataclass(frozen=True)
class Usage:
    limit: int
    remaining: int
    reset: int  # seconds until the window ends
    limited: bool


@dataclass(frozen=True)
class Check:
    """One limit to count a request against: ``rate`` (e.g. "100/m") per ``group``/``value``."""

    group: str
    value: str
    rate: str


@dataclass(frozen=True)
class Counter:
    """A plain counter bumped with the checks (a monthly quota): cache key and time to live."""

    key: str
    timeout: int


def hit(request: HttpRequest, *, group: str, value: str, rate: str) -> Usage | None:
    """Count one request against ``group``/``value`` at ``rate`` (e.g. "100/m").

    Returns None when limiting is off, or the store failed and we fail open. The tightest
    result is remembered on the request for the response headers.
    """
    return hit_many(request, [Check(group, value, rate)])[0][0]


def hit_many(
    request: HttpRequest, checks: Sequence[Check], *, counters: Sequence[Counter] = ()
) -> tuple[list[Usage | None], list[int | None]]:
    """Count one request against every check and bump every counter, in one round trip on
    Redis. Per check its usage (None: limiting off, no rate, or the store failed and we fail
    open; raises LimiterUnavailable when failing closed); per counter its new value (None:
    the store failed — counters always fail open)."""
    active = [c for c in checks if c.rate] if settings.RATELIMIT_ENABLE else []
    cache = counter_cache()
    if isinstance(cache, RedisCache):
        counts, values = _count_on_redis(cache, active, counters)
    else:
        counts, values = _count_in_cache(request, active, counters)
    if active and counts is None:
        if not settings.RATELIMIT_FAIL_OPEN:
            raise LimiterUnavailable(active[0].group)
        log.error("rate-limit store failed; failing open", extra={"group": active[0].group})
    found: dict[int, Usage | None] = {}
    for n, check in enumerate(active):
        usage = None if counts is None else counts[n]
        if usage is not None:
            remember(request, usage)
        found[id(check)] = usage
    return [found.get(id(c)) for c in checks], values


def _usage(check: Check, count: int, window: int) -> Usage:
    limit, _ = _split_rate(check.rate)
    return Usage(
        limit=limit,
        remaining=max(0, limit - count),
        reset=max(1, window - int(time.time())),
        limited=count > limit,
    )


# Every counter of one step in one command: INCRBY, and a time to live where the key has none
# (EXPIRE … NX: Redis 7). ARGV holds (amount, ttl) per key. One EVALSHA costs the client a
# fraction of packing and parsing two commands per counter in a pipeline.
_COUNT_LUA = """
local counts = {}
for i, name in ipairs(KEYS) do
  counts[i] = redis.call('INCRBY', name, ARGV[2 * i - 1])
  redis.call('EXPIRE', name, ARGV[2 * i], 'NX')
end
return counts
"""


# The counters' cache backend, one per thread. Django keeps one per thread and async context:
# on an event loop (the unary server) every request is a context of its own, and a new Redis
# cache backend is a new connection pool — a new TCP connection for every request's counting.
# Counting never awaits, so the requests of a loop can share their thread's backend.
_threads = threading.local()
_generation = 0  # bumped when CACHES or the alias changes (tests), so threads build anew


def counter_cache() -> BaseCache:
    """The cache the rate-limit counters live in (``RATELIMIT_USE_CACHE``), for this thread."""
    found = getattr(_threads, "cache", None)
    if found is None or found[0] != _generation:
        found = _threads.cache = (
            _generation,
            caches.create_connection(settings.RATELIMIT_USE_CACHE),
        )
    backend: BaseCache = found[1]
    return backend


# Counter names by check and window: django-ratelimit's name is a hash of them under
# settings read each time, about a tenth of the front door's CPU when built per request.
# Dropped when a setting changes (tests) and when it grows past a bound (windows move on).
_names: dict[tuple[str, int, str, str, str, int], str] = {}


@receiver(setting_changed)
def _forget_names(**kwargs: Any) -> None:
    global _generation  # one number for the process
    _names.clear()
    _generation += 1


def _key(cache: RedisCache, check: Check) -> tuple[str, int, int]:
    """The counter of a check: its cache key, window start and time to live."""
    _, period = _split_rate(check.rate)
    window = _get_window(check.value, period)
    memo = (cache.key_prefix, cache.version, check.group, check.rate, check.value, window)
    name = _names.get(memo)
    if name is None:
        if len(_names) >= 50_000:
            _names.clear()
        name = _names[memo] = cache.make_key(
            _make_cache_key(check.group, window, check.rate, check.value, ALL)
        )
    return name, window, period + EXPIRATION_FUDGE


def _count_on_redis(
    cache: RedisCache, checks: Sequence[Check], counters: Sequence[Counter]
) -> tuple[list[Usage | None] | None, list[int | None]]:
    counted = _count_batch_on_redis(cache, [(checks, counters)])
    if counted is None:
        log.error("rate-limit store unreachable", extra={"group": "script"})
        return None, [None] * len(counters)
    return counted[0]


def _count_batch_on_redis(
    cache: RedisCache, requests: Sequence[tuple[Sequence[Check], Sequence[Counter]]]
) -> list[tuple[list[Usage | None], list[int | None]]] | None:
    """Count many requests at once: one INCRBY per distinct counter, by the number of requests
    that count on it. The n requests sharing a counter that ends at c are numbered
    c - n + 1 … c in the order given, exactly as if each had made its own INCR. None when the
    store failed."""
    slots: dict[str, int] = {}  # counter name -> its position in KEYS
    amounts: list[int] = []
    ttls: list[int] = []
    plan: list[tuple[list[tuple[int, int, Check, int]], list[tuple[int, int]]]] = []

    def slot(name: str, ttl: int) -> tuple[int, int]:
        """(position, this request's rank among the batch's requests on the counter)."""
        at = slots.get(name)
        if at is None:
            at = slots[name] = len(amounts)
            amounts.append(0)
            ttls.append(ttl)
        amounts[at] += 1
        return at, amounts[at] - 1

    for checks, counters in requests:
        counted_checks = []
        for check in checks:
            name, window, ttl = _key(cache, check)
            at, rank = slot(name, ttl)
            counted_checks.append((at, rank, check, window))
        plan.append((counted_checks, [slot(cache.make_key(c.key), c.timeout) for c in counters]))
    if not amounts:
        return [([], []) for _ in requests]
    args: list[int] = []
    for amount, ttl in zip(amounts, ttls, strict=True):
        args += [amount, ttl]
    try:
        totals = _count_script(cache)(keys=list(slots), args=args)
    except (RedisError, OSError):
        log.warning("rate-limit counting script failed", exc_info=True)
        return None

    def value(at: int, rank: int) -> int:
        return int(totals[at]) - amounts[at] + rank + 1

    return [
        (
            [_usage(check, value(at, rank), window) for at, rank, check, window in checks],
            [value(at, rank) for at, rank in counters],
        )
        for checks, counters in plan
    ]


def hit_batch(
    requests: Sequence[tuple[Sequence[Check], Sequence[Counter]]],
) -> list[tuple[list[Usage | None], list[int | None]]]:
    """:func:`hit_many` for many requests in ONE round trip (the front door counts a web-side
    batch of inference requests at once; ``inference.transport.dispatch``). Redis only
    (:func:`counts_in_batches`). The caller remembers each usage on its own request
    (:func:`remember`)."""
    if not settings.RATELIMIT_ENABLE:
        requests = [([], counters) for _, counters in requests]
    cache = counter_cache()
    assert isinstance(cache, RedisCache)
    counted = _count_batch_on_redis(cache, requests)
    if counted is not None:
        return counted
    if any(checks for checks, _ in requests):
        if not settings.RATELIMIT_FAIL_OPEN:
            raise LimiterUnavailable("batch")
        log.error("rate-limit store unreachable; failing open", extra={"group": "batch"})
    return [([None] * len(checks), [None] * len(counters)) for checks, counters in requests]


def counts_in_batches() -> bool:
    """Whether the counters live where :func:`hit_batch` can count them (Redis)."""
    return isinstance(counter_cache(), RedisCache)


# Django's cache builds a new redis.Redis (with its ~170 response callbacks) for every operation;
# on the hot path one per cache backend object (Django keeps one per thread) is enough.
_scripts: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _count_script(cache: RedisCache) -> Any:
    """The counting script on Django's own client for this cache (its pool, its timeouts), so
    CACHES stays the one switch (tests point it at a dead server)."""
    backend = cache._cache  # type: ignore[attr-defined]
    script = _scripts.get(backend)
    if script is None:
        script = _scripts[backend] = backend.get_client(write=True).register_script(_COUNT_LUA)
    return script


def _count_in_cache(
    request: HttpRequest, checks: Sequence[Check], counters: Sequence[Counter]
) -> tuple[list[Usage | None] | None, list[int | None]]:
    usages: list[Usage | None] = []
    failed = False
    for check in checks:
        try:
            usage = get_usage(
                request,
                group=check.group,
                key=lambda _g, _r, value=check.value: value,
                rate=check.rate,
                increment=True,
            )
        except (RedisError, OSError):
            log.exception("rate-limit store unreachable", extra={"group": check.group})
            usage = None
        if usage is None or usage["time_left"] == -1:
            failed = True
            break
        usages.append(
            Usage(
                limit=usage["limit"],
                remaining=max(0, usage["limit"] - usage["count"]),
                reset=max(1, usage["time_left"]),
                limited=usage["should_limit"],
            )
        )
    cache = counter_cache()
    values: list[int | None] = []
    for counter in counters:
        try:
            try:
                values.append(int(cache.incr(counter.key)))
            except ValueError:  # no counter yet in this period
                if cache.add(counter.key, 1, timeout=counter.timeout):
                    values.append(1)
                else:
                    values.append(int(cache.incr(counter.key)))  # another thread added it
        except (RedisError, OSError, ValueError):
            log.exception("counter unavailable", extra={"counter": counter.key})
            values.append(None)
    return (None if failed else usages), values


def uncount(counters: Sequence[Counter]) -> None:
    """Take back one count of each counter (a request refused after it was counted)."""
    cache = counter_cache()
    for counter in counters:
        try:
            cache.decr(counter.key)
        except (RedisError, OSError, ValueError):
            log.exception("taking back a count failed", extra={"counter": counter.key})


def remember(request: HttpRequest, result: Usage) -> None:
    """Keep the tightest limit seen for the response's RateLimit-* headers."""
    tightest: Usage | None = getattr(request, "_sluice_ratelimit", None)
    if (
        tightest is None
        or result.limited
        or (not tightest.limited and result.remaining < tightest.remaining)
    ):
        request._sluice_ratelimit = result  # type: ignore[attr-defined]


def headers_for(usage: Usage) -> dict[str, str]:
    headers = {
        "RateLimit-Limit": str(usage.limit),
        "RateLimit-Remaining": str(usage.remaining),
        "RateLimit-Reset": str(usage.reset),
    }
    if usage.limited:
        headers["Retry-After"] = str(usage.reset)
    return headers
