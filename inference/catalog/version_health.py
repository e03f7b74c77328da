"""Per-version health: the recent outcomes of a version's requests, across every process.

The web tier records each unary request's outcome (:func:`record`): ``ok``, ``input_error``
(the engine raised for this one request's input), ``engine_error`` (the engine failed for the
whole version: it could not load or run), ``timeout`` (a worker took the request and did not
answer before its deadline), ``worker_lost`` (the worker holding it died, where a caller can
tell; the web tier cannot tell a dead worker from a hung one within the worker's heartbeat
time, and records ``timeout``) or ``unavailable`` (nothing could serve it: no worker took
it, the engine is missing). Shadow answers are recorded the same way where they are compared
(:mod:`inference.transport.shadows`). :func:`window` reads them back, summed over every process, for
the router's decisions, ``/v1/models``, ``listmodels``, the admin and Prometheus.

Recording is in-process and cheap (a lock, a few additions): the counts wait in a buffer that a
background thread flushes to the shared cache (Redis in production, the process's LocMem cache
embedded) at most once a second, so a request never pays a round trip for it. What the shared
cache holds is bucketed: ``BUCKET_SECONDS`` buckets of outcome counts, a latency histogram of
successful requests (for the p99) and the set of callers that failed, each kept for
``RETENTION_SECONDS``; plus the last few errors of each version (operator text, never sent to
tenants).
"""

from __future__ import annotations

import atexit
import bisect
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

from inference.rules.canary_policy import HEALTH_RETENTION_SECONDS
from inference.rules.outcome_kinds import COUNTED, FAILURES, INPUT_ERROR, OK, OUTCOMES
from plumbing.metrics import INFERENCE_OUTCOMES
from plumbing.periodic import Periodic

log = logging.getLogger(__name__)


BUCKET_SECONDS = 5
RETENTION_SECONDS = HEALTH_RETENTION_SECONDS
FLUSH_SECONDS = 1.0
ERRORS_KEPT = 10
ERROR_MAX_CHARS = 500
# Upper bounds (ms) of the latency histogram's buckets; the last is open-ended.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 60000, math.inf,
)  # fmt: skip


@dataclass(frozen=True)
class Window:
    """A version's outcomes over the last seconds, all processes together."""

    requests: int  # outcomes counted in the window (``unavailable`` is not one)
    failures: int  # outcomes that say the version is unhealthy: engine_error, timeout, worker_lost
    input_failures: int  # engine errors attributed to one request's input
    error_rate: float  # (failures + input_failures) / requests; 0.0 with no requests
    p99_ms: float | None  # latency p99 of successful requests; None when there are none
    failing_callers: int  # distinct callers (tenant ids) among failures + input_failures
    last_error: str | None  # operator-facing text (never sent to tenants)
    last_error_at: float | None  # unix time
    last_error_outcome: str | None = None  # the outcome it came with (tenants may see this)


_Error = tuple[float, str, str]  # unix time, text, outcome


@dataclass
class _Bucket:
    counts: dict[str, int] = field(default_factory=dict)
    latency: dict[int, int] = field(default_factory=dict)  # histogram index -> count
    callers: set[str] = field(default_factory=set)  # failing callers


# (version id, bucket number) -> what this process recorded and has not flushed yet.
_pending: dict[tuple[int, int], _Bucket] = {}
# version id -> the errors recorded since the last flush.
_errors: dict[int, list[_Error]] = {}
# version id -> (model, version): the labels of its outcome counters.
_labels: dict[int, tuple[str, str]] = {}
_lock = threading.Lock()
_flushing = threading.Lock()  # held by a flush from taking the buffer until it is written


def record(
    version_id: int,
    *,
    outcome: str,
    latency_ms: float | None,
    caller: str | None,
    error: str | None = None,
    labels: tuple[str, str] | None = None,
) -> None:
    """Count one request's outcome (``OUTCOMES``); ``latency_ms`` of a successful request
    feeds the p99, ``caller`` (a tenant id) of a failed one the failing callers, ``error``
    (operator text) the last error. In-process only: flushed within about a second, when
    the outcomes of a version recorded with ``labels`` (model, version) are also added to
    ``sluice_inference_outcomes_total`` — one increment per flush, not per request."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    now = time.time()
    slot = (version_id, int(now // BUCKET_SECONDS))
    with _lock:
        if labels is not None:
            _labels[version_id] = labels
        bucket = _pending.get(slot)
        if bucket is None:
            bucket = _pending[slot] = _Bucket()
        bucket.counts[outcome] = bucket.counts.get(outcome, 0) + 1
        if outcome == OK:
            if latency_ms is not None:
                index = bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)
                bucket.latency[index] = bucket.latency.get(index, 0) + 1
        elif caller is not None and (outcome in FAILURES or outcome == INPUT_ERROR):
            bucket.callers.add(caller)
        if error:
            _errors.setdefault(version_id, []).append((now, error[:ERROR_MAX_CHARS], outcome))
    if not _flusher.started:
        _flusher.start()


def flush() -> None:
    """Write what this process recorded to the shared cache now (the flusher does it about
    once a second; tests and process exit call it directly)."""
    with _flushing:
        with _lock:
            if not _pending and not _errors:
                return
            buckets = dict(_pending)
            errors = dict(_errors)
            _pending.clear()
            _errors.clear()
        _count(buckets)
        backend = _backend()
        if isinstance(backend, RedisCache):
            _flush_redis(backend, buckets, errors)
        else:
            _flush_local(backend, buckets, errors)


def _count(buckets: dict[tuple[int, int], _Bucket]) -> None:
    """This process's outcome counters (Prometheus), from the flushed buckets."""
    for (version_id, _), bucket in buckets.items():
        labels = _labels.get(version_id)
        if labels is not None:
            for outcome, n in bucket.counts.items():
                INFERENCE_OUTCOMES.labels(*labels, outcome).inc(n)


def window(version_id: int, seconds: float) -> Window:
    """The version's outcomes over the last ``seconds`` (whole buckets; at most
    ``RETENTION_SECONDS``), summed across processes."""
    return windows([version_id], seconds)[version_id]


def windows(version_ids: Iterable[int], seconds: float) -> dict[int, Window]:
    """:func:`window` for several versions in one round trip."""
    ids = list(dict.fromkeys(version_ids))
    if not ids:
        return {}
    now = time.time()
    span = min(max(seconds, 0.0), RETENTION_SECONDS)
    numbers = range(int((now - span) // BUCKET_SECONDS), int(now // BUCKET_SECONDS) + 1)
    backend = _backend()
    if isinstance(backend, RedisCache):
        read = _read_redis(backend, ids, list(numbers))
    else:
        read = _read_local(backend, ids, list(numbers))
    return {vid: _summarise(*read[vid]) for vid in ids}


def discard() -> None:
    """Forget what this process has recorded and not flushed, once a flush under way is
    written (tests: nothing of one test lands in the next one's cache)."""
    with _flushing, _lock:
        _pending.clear()
        _errors.clear()


# --- aggregation ------------------------------------------------------------------------------


def _summarise(buckets: list[_Bucket], callers: set[str], last: _Error | None) -> Window:
    counts: dict[str, int] = {}
    latency = [0] * len(LATENCY_BOUNDS_MS)
    for bucket in buckets:
        for outcome, n in bucket.counts.items():
            counts[outcome] = counts.get(outcome, 0) + n
        for index, n in bucket.latency.items():
            if 0 <= index < len(latency):
                latency[index] += n
    requests = sum(counts.get(o, 0) for o in COUNTED)
    failures = sum(counts.get(o, 0) for o in FAILURES)
    input_failures = counts.get(INPUT_ERROR, 0)
    return Window(
        requests=requests,
        failures=failures,
        input_failures=input_failures,
        error_rate=(failures + input_failures) / requests if requests else 0.0,
        p99_ms=_quantile(latency, 0.99),
        failing_callers=len(callers),
        last_error=last[1] if last else None,
        last_error_at=last[0] if last else None,
        last_error_outcome=last[2] if last else None,
    )


def _quantile(histogram: list[int], q: float) -> float | None:
    """The q-quantile of a latency histogram, interpolated inside its bucket as Prometheus's
    ``histogram_quantile`` does (the open-ended last bucket answers its lower bound)."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, n in enumerate(histogram):
        if n and seen + n >= rank:
            upper = LATENCY_BOUNDS_MS[index]
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
            if math.isinf(upper):
                return lower
            return round(lower + (upper - lower) * (rank - seen) / n, 2)
        seen += n
    return None  # pragma: no cover - rank never exceeds the total


# --- the shared cache -------------------------------------------------------------------------


def _backend() -> Any:
    """This thread's handle on the default cache (what ``django.core.cache.cache`` proxies)."""
    return caches["default"]


def _names(backend: Any, version_id: int, number: int) -> tuple[str, str]:
    """The bucket's hash and its callers' set (prefixed as the cache prefixes its keys)."""
    base = f"inference:vh:{version_id}:{number}"
    return backend.make_key(base), backend.make_key(f"{base}:callers")


def _errors_name(backend: Any, version_id: int) -> str:
    return str(backend.make_key(f"inference:vh:{version_id}:errors"))


def _flush_redis(
    backend: RedisCache,
    buckets: dict[tuple[int, int], _Bucket],
    errors: dict[int, list[_Error]],
) -> None:
    ttl = RETENTION_SECONDS + BUCKET_SECONDS
    pipe = backend._cache.get_client(write=True).pipeline(transaction=False)  # type: ignore[attr-defined]
    for (version_id, number), bucket in buckets.items():
        counts, callers = _names(backend, version_id, number)
        for outcome, n in bucket.counts.items():
            pipe.hincrby(counts, f"o:{outcome}", n)
        for index, n in bucket.latency.items():
            pipe.hincrby(counts, f"h:{index}", n)
        pipe.expire(counts, ttl)
        if bucket.callers:
            pipe.sadd(callers, *bucket.callers)
            pipe.expire(callers, ttl)
    for version_id, found in errors.items():
        name = _errors_name(backend, version_id)
        # The member carries its time, so two equal texts stay two entries.
        pipe.zadd(name, {json.dumps(entry): entry[0] for entry in found})
        pipe.zremrangebyrank(name, 0, -ERRORS_KEPT - 1)
        pipe.expire(name, ttl)
    try:
        pipe.execute()
    except (RedisError, OSError):
        _dropped(sum(sum(b.counts.values()) for b in buckets.values()))


def _read_redis(
    backend: RedisCache, ids: list[int], numbers: list[int]
) -> dict[int, tuple[list[_Bucket], set[str], _Error | None]]:
    pipe = backend._cache.get_client().pipeline(transaction=False)  # type: ignore[attr-defined]
    for version_id in ids:
        names = [_names(backend, version_id, n) for n in numbers]
        for counts, _ in names:
            pipe.hgetall(counts)
        pipe.sunion([callers for _, callers in names])
        pipe.zrevrange(_errors_name(backend, version_id), 0, 0)
    got = iter(pipe.execute())
    out: dict[int, tuple[list[_Bucket], set[str], _Error | None]] = {}
    for version_id in ids:
        buckets = []
        for _ in numbers:
            bucket = _Bucket()
            for raw_name, raw_value in next(got).items():
                name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
                kind, _, what = name.partition(":")
                if kind == "o":
                    bucket.counts[what] = int(raw_value)
                elif kind == "h":
                    bucket.latency[int(what)] = int(raw_value)
            buckets.append(bucket)
        callers = {c.decode() if isinstance(c, bytes) else str(c) for c in next(got)}
        newest = next(got)
        last = None
        if newest:
            at, text, outcome = json.loads(newest[0])
            last = (float(at), str(text), str(outcome))
        out[version_id] = (buckets, callers, last)
    return out


# A cache that is not Redis (LocMem, embedded) lives in this process: a lock makes its
# read-modify-write of a bucket atomic.
_local_lock = threading.Lock()


def _flush_local(
    backend: Any,
    buckets: dict[tuple[int, int], _Bucket],
    errors: dict[int, list[_Error]],
) -> None:
    ttl = RETENTION_SECONDS + BUCKET_SECONDS
    with _local_lock:
        for (version_id, number), bucket in buckets.items():
            name = f"inference:vh:{version_id}:{number}"
            stored: _Bucket = backend.get(name) or _Bucket()
            for outcome, n in bucket.counts.items():
                stored.counts[outcome] = stored.counts.get(outcome, 0) + n
            for index, n in bucket.latency.items():
                stored.latency[index] = stored.latency.get(index, 0) + n
            stored.callers |= bucket.callers
            backend.set(name, stored, timeout=ttl)
        for version_id, found in errors.items():
            name = f"inference:vh:{version_id}:errors"
            kept: list[_Error] = backend.get(name) or []
            backend.set(name, sorted([*kept, *found])[-ERRORS_KEPT:], timeout=ttl)


def _read_local(
    backend: Any, ids: list[int], numbers: list[int]
) -> dict[int, tuple[list[_Bucket], set[str], _Error | None]]:
    out: dict[int, tuple[list[_Bucket], set[str], _Error | None]] = {}
    for version_id in ids:
        names = [f"inference:vh:{version_id}:{n}" for n in numbers]
        found = backend.get_many([*names, f"inference:vh:{version_id}:errors"])
        buckets = [found[name] for name in names if name in found]
        callers: set[str] = set().union(*(b.callers for b in buckets))
        kept = found.get(f"inference:vh:{version_id}:errors") or []
        out[version_id] = (buckets, callers, kept[-1] if kept else None)
    return out


# --- the flusher ------------------------------------------------------------------------------

_last_drop_log = 0.0


def _dropped(count: int) -> None:
    """The shared cache refused a flush: the counts are lost (health is best effort), and
    said so at most once a minute."""
    global _last_drop_log  # one clock for the process
    now = time.monotonic()
    if now - _last_drop_log >= 60:
        _last_drop_log = now
        log.warning("version health: the cache is unreachable; %d outcome(s) dropped", count)


def _forked() -> None:
    """A forked child (gunicorn's workers) has no flusher and must not flush its parent's
    buffer a second time."""
    global _lock, _flushing  # this process's own, from here on
    _lock, _flushing = threading.Lock(), threading.Lock()
    _pending.clear()
    _errors.clear()


os.register_at_fork(after_in_child=_forked)


_flusher = Periodic("version-health", FLUSH_SECONDS, flush)
atexit.register(_flusher.run_once)  # a process that stops keeps its last second of outcomes
