"""Each version's state for Prometheus, read at scrape time from what every process shares
(the circuits and :mod:`inference.catalog.version_health` in the cache, the registry in the
database), so any one process's ``/metrics`` tells the whole truth and nothing is summed
twice in multiprocess mode. The per-request outcomes are a counter of each process instead
(``sluice_inference_outcomes_total``, :mod:`plumbing.metrics`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.conf import settings
from django.db import DatabaseError
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from inference.catalog import selectors
from inference.models import ModelVersion
from inference.rules.breaker import CircuitBreaker

log = logging.getLogger(__name__)

STATES = (CircuitBreaker.CLOSED, CircuitBreaker.OPEN, CircuitBreaker.HALF_OPEN)


class VersionHealthCollector(Collector):
    """``sluice_version_*`` gauges of every active version."""

    def collect(self) -> Iterator[Metric]:
        window = settings.INFERENCE_HEALTH_WINDOW_SECONDS
        labels = ["model", "version"]
        circuit = GaugeMetricFamily(
            "sluice_version_circuit_state",
            "1 for the state a version's circuit is in (closed, open, half_open), else 0.",
            labels=[*labels, "state"],
        )
        available = GaugeMetricFamily(
            "sluice_version_available",
            "1 when a request routed to the version would be served now.",
            labels=labels,
        )
        requests = GaugeMetricFamily(
            "sluice_version_recent_requests",
            f"Requests the version ran in the last {window} s (all web processes).",
            labels=labels,
        )
        error_rate = GaugeMetricFamily(
            "sluice_version_error_rate",
            f"Failed share of the version's requests in the last {window} s.",
            labels=labels,
        )
        p99 = GaugeMetricFamily(
            "sluice_version_latency_p99_seconds",
            f"p99 latency of the version's successful requests in the last {window} s.",
            labels=labels,
        )
        try:
            versions = list(
                ModelVersion.objects.filter(state=ModelVersion.State.ACTIVE).select_related("model")
            )
            states = selectors.version_states(versions)
        except (DatabaseError, RedisError, OSError):
            log.warning("version health metrics unavailable", exc_info=True)
            versions, states = [], {}
        for v in versions:
            state, names = states[v.pk], [v.model.name, v.version]
            for name in STATES:
                circuit.add_metric([*names, name], 1.0 if state.circuit == name else 0.0)
            available.add_metric(names, 1.0 if state.available else 0.0)
            requests.add_metric(names, float(state.health.requests))
            error_rate.add_metric(names, state.health.error_rate)
            if state.health.p99_ms is not None:
                p99.add_metric(names, state.health.p99_ms / 1000)
        yield from (circuit, available, requests, error_rate, p99)
