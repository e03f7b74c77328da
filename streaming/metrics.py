"""The ``metrics`` kind: one ``metric`` event per second on the platform stream
``platform.metrics`` — requests/s, latency percentiles, batch sizes, queue depth and in-flight
requests per queue, active streams — which staff follow over SSE or WebSocket and the admin's
live dashboard charts.

Two parts:

- A **recorder** thread in every process that serves or works (started by the request
  middleware, ``manage.py serve`` and the Celery worker): once a second it takes the change of
  its own Prometheus counters and histograms (``plumbing.metrics``: requests and their duration,
  the batcher's batch sizes) and adds it to the platform's bucket of that second (a Redis hash
  that lives 2 minutes; a dict in the embedded process). Nothing is added to the request path.
- A **sampler** thread in ``manage.py serve``: each second it sums the last complete second's
  bucket, reads queue depths from the broker and the active stream leases, and appends one
  event. With several ASGI processes exactly one samples: they compete for a Redis lease
  (``SET NX PX``) renewed every second, and another takes over within ~3 s if the holder dies.

Why a thread and not a Celery beat task: a sample a second through the broker would queue
behind the very backlog it is meant to show, and beat is one more process the embedded
default does not have.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from celery import current_app as app
from django.conf import settings

from plumbing.metrics import BATCH_SIZE, HTTP_DURATION, broker_queues

log = logging.getLogger(__name__)

STREAM = "platform.metrics"
METRIC_EVENT = "metric"
STREAM_MAXLEN = 3600  # an hour of samples
BUCKET_TTL = 120
LEADER_TTL_MS = 3000


def _histogram(metric: Any) -> tuple[dict[float, float], float, float]:
    """Cumulative bucket counts by upper bound, sum and count of a histogram, over its labels."""
    buckets: dict[float, float] = defaultdict(float)
    total = count = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return dict(buckets), total, count


def snapshot() -> dict[str, float]:
    """This process's cumulative figures, flattened to ``name -> value``."""
    out: dict[str, float] = {}
    buckets, _, count = _histogram(HTTP_DURATION)
    out["requests"] = count
    for bound, value in buckets.items():
        out[f"latency_le:{bound}"] = value
    buckets, total, count = _histogram(BATCH_SIZE)
    out["batch_sum"], out["batches"] = total, count
    for bound, value in buckets.items():
        out[f"batch_le:{bound}"] = value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile`` as Prometheus does it: linear within the bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if math.isinf(bound):
                return lower
            inside = buckets[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1)
        lower, below = bound, buckets[bound]
    return lower


class Buckets:
    """Per-second sums shared by the processes: Redis hashes, or a dict when embedded."""

    def __init__(self, redis_url: str | None, prefix: str) -> None:
        self._prefix = prefix
        self._local: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._lock = threading.Lock()
        self.redis: Any = None
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(
                redis_url,
                decode_responses=True,
                socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
                socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
            )

    def _key(self, second: int) -> str:
        return f"{self._prefix}:metrics:s:{second}"

    def add(self, second: int, values: dict[str, float]) -> None:
        values = {k: v for k, v in values.items() if v}
        if not values:
            return
        if self.redis is None:
            with self._lock:
                for name, value in values.items():
                    self._local[second][name] += value
                for old in [s for s in self._local if s < second - BUCKET_TTL]:
                    del self._local[old]
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, value in values.items():
            pipe.hincrbyfloat(self._key(second), name, value)
        pipe.expire(self._key(second), BUCKET_TTL)
        pipe.execute()

    def get(self, second: int) -> dict[str, float]:
        if self.redis is None:
            with self._lock:
                return dict(self._local.get(second, {}))
        return {k: float(v) for k, v in self.redis.hgetall(self._key(second)).items()}


_buckets: Buckets | None = None
_buckets_lock = threading.Lock()


def buckets() -> Buckets:
    global _buckets
    with _buckets_lock:
        if _buckets is None:
            _buckets = Buckets(settings.REDIS_URL or None, settings.REDIS_KEY_PREFIX)
        return _buckets


class Recorder:
    """Adds this process's change of each second to that second's bucket."""

    def __init__(self, target: Buckets, read: Callable[[], dict[str, float]] = snapshot) -> None:
        self.target = target
        self.read = read
        self.last = read()

    def flush(self, second: int) -> None:
        now = self.read()
        delta = {k: v - self.last.get(k, 0.0) for k, v in now.items()}
        self.last = now
        self.target.add(second, delta)

    def run_forever(self) -> None:
        while True:
            # Just after each whole second: what happened during it goes to its bucket.
            time.sleep(1.05 - time.time() % 1)
            try:
                self.flush(int(time.time()) - 1)
            except Exception:  # noqa: BLE001 - a metrics hiccup must never kill the thread
                log.warning("metrics: recording a second failed", exc_info=True)


_recorder_started = False
_recorder_lock = threading.Lock()


def start_recorder() -> None:
    """Once per process: the thread that records this process's figures."""
    global _recorder_started
    with _recorder_lock:
        if _recorder_started or not settings.METRICS_STREAM_ENABLE:
            return
        _recorder_started = True
    recorder = Recorder(buckets())
    threading.Thread(target=recorder.run_forever, name="metrics-recorder", daemon=True).start()


# --- the sampler ---------------------------------------------------------------------------


def queue_depths(connection: Any) -> dict[str, int]:
    """Messages waiting per Celery queue, through kombu (Redis broker or in-process memory)."""
    from kombu import exceptions as kombu_errors

    # A passive declare of a queue nobody declared yet (the stubs lack ChannelError).
    CHANNEL_ERROR: type[Exception] = getattr(kombu_errors, "ChannelError")  # noqa: B009

    depths: dict[str, int] = {}
    channel = connection.default_channel
    for queue in broker_queues():
        try:
            depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
        except (CHANNEL_ERROR, kombu_errors.OperationalError, KeyError):
            depths[queue] = 0  # not declared yet: nothing waits
    return depths


# Figures other apps add to each sample (name -> reader), registered by those apps in their
# AppConfig.ready, so this app imports none of its producers.
gauges: dict[str, Callable[[], Any]] = {}


def register_gauge(name: str, read: Callable[[], Any]) -> None:
    gauges[name] = read


def _gauges() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, read in list(gauges.items()):
        try:
            out[name] = read()
        except Exception:  # noqa: BLE001 - one broken gauge must not cost the whole sample
            log.warning("metrics: gauge %s failed", name, exc_info=True)
            out[name] = None
    return out


def sample(second: int, figures: dict[str, float], **extra: Any) -> dict[str, Any]:
    """The event data for one second."""
    latency = {
        float(k.split(":", 1)[1]): v for k, v in figures.items() if k.startswith("latency_le:")
    }
    batches = figures.get("batches", 0.0)
    percentiles = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        value = quantile(q, latency)
        percentiles[name] = None if value is None else round(value * 1000, 2)
    return {
        "name": "platform",
        "t": second,
        "requests_per_s": round(figures.get("requests", 0.0), 2),
        "latency_ms": percentiles,
        "batches": int(batches),
        "batch_size_mean": round(figures.get("batch_sum", 0.0) / batches, 2) if batches else None,
        **extra,
    }


class Sampler:
    """Appends one sample a second to ``platform.metrics`` while it is the leader."""

    def __init__(self, source: Buckets, *, leader_key: str) -> None:
        self.source = source
        self.leader_key = leader_key
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._connection: Any = None

    def is_leader(self) -> bool:
        if self.source.redis is None:
            return True  # embedded: one process
        client = self.source.redis
        if client.set(self.leader_key, self.me, nx=True, px=LEADER_TTL_MS):
            return True
        if client.get(self.leader_key) == self.me:
            client.pexpire(self.leader_key, LEADER_TTL_MS)
            return True
        return False

    def _ensure_stream(self) -> None:
        from streaming.eventlog import get_log
        from streaming.loglines import PLATFORM_TENANT

        if get_log().meta(STREAM) is None:
            get_log().create(
                STREAM, tenant_id=PLATFORM_TENANT, kind="metrics", maxlen=STREAM_MAXLEN
            )

    def _queues(self) -> dict[str, int]:
        try:
            if self._connection is None:
                self._connection = app.connection_for_read()
            return queue_depths(self._connection)
        except Exception:  # noqa: BLE001 - the broker may be down; the sample says so
            log.warning("metrics: queue depth unavailable", exc_info=True)
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.release()
            self._connection = None
            return {}

    def tick(self, second: int) -> str | None:
        """Append the sample of ``second`` if this process leads; its id."""
        from streaming.eventlog import StreamNotFound, get_log
        from streaming.services import stream_slots_total

        if not self.is_leader():
            return None
        data = sample(
            second,
            self.source.get(second),
            queue_depth=self._queues(),
            active_streams=stream_slots_total(),
            **_gauges(),
        )
        self._ensure_stream()
        try:
            return get_log().append(STREAM, METRIC_EVENT, data)
        except StreamNotFound:  # expired between the check and the append
            self._ensure_stream()
            return get_log().append(STREAM, METRIC_EVENT, data)

    def run_forever(self) -> None:
        while True:
            # Half a second into each second: every recorder has flushed the previous one.
            time.sleep(1.5 - time.time() % 1)
            try:
                self.tick(int(time.time()) - 1)
            except Exception:  # noqa: BLE001 - a metrics hiccup must never kill the thread
                log.warning("metrics: sampling failed", exc_info=True)


def start_sampler() -> None:
    """The sampler thread of ``manage.py serve`` (one leader among all ASGI processes)."""
    if not settings.METRICS_STREAM_ENABLE:
        return
    start_recorder()
    sampler = Sampler(buckets(), leader_key=f"{settings.REDIS_KEY_PREFIX}:metrics:leader")
    threading.Thread(target=sampler.run_forever, name="metrics-sampler", daemon=True).start()
