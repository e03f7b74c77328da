"""Prometheus metrics: the contract in docs/deployment.md (the alerts and dashboard use it).

Web and ASGI processes serve ``/metrics``; a separate worker process serves its own on
``WORKER_METRICS_PORT``. With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn with several worker
processes), samples are written to that directory and ``/metrics`` aggregates them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "sluice_http_requests_total", "HTTP requests answered.", ["process", "method", "status"]
)
HTTP_DURATION = Histogram(
    "sluice_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["process", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "sluice_batch_size",
    "Requests merged into one model call by the worker's batcher.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
UPSTREAM_CALLS = Counter(
    "sluice_upstream_calls_total",
    "Calls (each attempt, retries included) from remote runtimes to their upstreams.",
    ["model", "outcome"],
)
UPSTREAM_DURATION = Histogram(
    "sluice_upstream_call_duration_seconds",
    "Time of one call to a remote runtime's upstream (until its answer's headers).",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INFERENCE_OUTCOMES = Counter(
    "sluice_inference_outcomes_total",
    "Unary inference requests by outcome (inference.catalog.version_health's: ok, input_error, "
    "engine_error, timeout, worker_lost, unavailable); counted within a second.",
    ["model", "version", "outcome"],
)
MEDIA_FIRST_EVENT = Histogram(
    "sluice_media_first_event_seconds",
    "Worker time from taking a media stream to its first event.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MEDIA_REALTIME_FACTOR = Histogram(
    "sluice_media_realtime_factor",
    "Processing time / media duration of a finished media stream.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 4, 8),
)

# Shadow versions compared with the primary answers (inference/transport/shadows.py), from the web
# processes that pair them.
SHADOW_REQUESTS = Counter(
    "sluice_shadow_requests_total",
    "Shadow copies by outcome: compared with the primary's answer, shadow_error, unanswered "
    "(no answer before the deadline), skipped (queue full, broker unreachable).",
    ["model", "version", "outcome"],
)
SHADOW_COMPARED = Counter(
    "sluice_shadow_compared_total",
    "Shadow outputs compared with the primary's: labels, numbers (each value), mismatches "
    "(missing, another shape or kind).",
    ["model", "version", "output", "kind"],
)
SHADOW_AGREED = Counter(
    "sluice_shadow_agreed_total",
    "Shadow label outputs equal to the primary's.",
    ["model", "version", "output"],
)
SHADOW_ABS_DIFF = Counter(
    "sluice_shadow_abs_diff_total",
    "Sum of absolute differences between shadow and primary number outputs (divide by "
    'sluice_shadow_compared_total{kind="number"} for the mean).',
    ["model", "version", "output"],
)
SHADOW_LATENCY = Histogram(
    "sluice_shadow_latency_seconds",
    "Worker time of the compared answers, the primary's and the shadow's.",
    ["model", "version", "role"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CANARY_ROLLBACKS = Counter(
    "sluice_canary_rollbacks_total",
    "Canaries the canary policy rolled back (weight to 0), by the first reason.",
    ["model", "version", "reason"],
)


def broker_queues() -> list[str]:
    return list(dict.fromkeys(["celery", *settings.INFERENCE_QUEUES, "jobs"]))


class QueueDepthCollector(Collector):
    """``sluice_queue_depth{queue}``: messages waiting in each Celery queue, read from the Redis
    broker at scrape time (nothing for the in-process memory broker)."""

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "sluice_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"]
        )
        url = settings.CELERY_BROKER_URL
        if url.startswith(("redis://", "rediss://")):
            prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
            client = redis.Redis.from_url(url, socket_timeout=settings.REDIS_SOCKET_TIMEOUT)
            try:
                depths = client.pipeline(transaction=False)
                queues = broker_queues()
                for queue in queues:
                    depths.llen(f"{prefix}{queue}")
                for queue, depth in zip(queues, depths.execute(), strict=True):
                    gauge.add_metric([queue], float(depth))
            except redis.RedisError:
                log.warning("queue depth unavailable: broker unreachable")
            finally:
                client.close()
        yield gauge


_shared_collectors: list[Callable[[], Collector]] = []


def register_shared_collector(factory: Callable[[], Collector]) -> None:
    """Add a collector read at scrape time from state every process shares (an app registers
    its own in ``AppConfig.ready``, so this module imports no app)."""
    if factory not in _shared_collectors:
        _shared_collectors.append(factory)


def exposition() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    shared = CollectorRegistry()  # read at scrape time from what every process shares
    shared.register(QueueDepthCollector())
    for collector in _shared_collectors:
        shared.register(collector())
    return generate_latest(registry) + generate_latest(shared)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: for Prometheus on the pod network; nginx does not route it."""
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


_process: str | None = None


def serve_as(process: str) -> None:
    """Name this process's requests in the metrics (the unary server: ``unary``) instead of
    by its interface (``web`` for WSGI, ``asgi``)."""
    global _process  # one name per process, set once at start-up
    _process = process


# The labelled children by (process, method, status): prometheus_client's labels() checks and
# locks on every call, a few per cent of a unary request's CPU.
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(*, asgi: bool, method: str, status: int, seconds: float) -> None:
    process = _process or ("asgi" if asgi else "web")
    found = _children.get((process, method, status))
    if found is None:
        if len(_children) >= 1000:  # methods are the client's to choose
            _children.clear()
        found = _children[(process, method, status)] = (
            HTTP_REQUESTS.labels(process, method, str(status)),
            HTTP_DURATION.labels(process, method),
        )
    found[0].inc()
    found[1].observe(seconds)
