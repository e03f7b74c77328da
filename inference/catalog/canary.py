"""Automatic canary rollback: a canary that breaks its model's policy loses its traffic.

A model may declare a canary policy (``Model.canary_policy``): an analysis window, the
requests a canary must have served in it before it is judged, how much its error rate may
exceed the stable version's, and how many times the stable version's p99 its own may be. A
canary is an active, non-shadow version with weight above 0 other than the stable one. It is
judged on its outcomes since it last got traffic (``serving_since``), at most the window,
against the stable version's over the same span — per-version windows summed over every
process (:mod:`inference.catalog.version_health`). When it breaks the policy its weight goes to 0,
the stable version takes its share, a ``canary-rollback`` event records why with the figures, a
warning is logged and ``sluice_canary_rollbacks_total`` counts it (:meth:`Model.canary_cut`,
exactly once across processes).

Where it runs: every web process judges the models it routes, about once a second, on a
thread of its own (:func:`watch`, called when a routing table with a policy and a canary is
loaded), so a rollback follows within a second or two of the window proving it; celery beat
judges every model with a policy every 10 s as well (the ``inference_canary`` task), which
covers a model whose web processes went idle or restarted.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from inference.catalog import version_health
from inference.models import Model, ModelVersion
from inference.rules.canary_policy import Policy, policy_parse
from plumbing.metrics import CANARY_ROLLBACKS
from plumbing.periodic import Periodic

log = logging.getLogger(__name__)

# A model not routed by this process for this long is no longer judged by it.
WATCH_SECONDS = 120
# A p99 of fewer requests is their slowest one: latency is judged once both sides have this many.
P99_MIN_REQUESTS = 100


def judge(
    policy: Policy, canary: version_health.Window, stable: version_health.Window
) -> list[str]:
    """Why the canary breaks the policy (empty: it does not, or has not served enough)."""
    if canary.requests < policy.min_requests:
        return []
    reasons = []
    allowed = stable.error_rate + policy.max_error_rate_increase
    if canary.error_rate > allowed:
        reasons.append(
            f"error rate {canary.error_rate:.3f} over {canary.requests} requests > stable "
            f"{stable.error_rate:.3f} + {policy.max_error_rate_increase:g}"
        )
    samples = max(policy.min_requests, P99_MIN_REQUESTS)
    if (
        policy.max_p99_ratio is not None
        and canary.p99_ms is not None
        and stable.p99_ms is not None
        and min(canary.requests, stable.requests) >= samples
        and canary.p99_ms > policy.max_p99_ratio * stable.p99_ms
    ):
        reasons.append(
            f"p99 {canary.p99_ms:g} ms > {policy.max_p99_ratio:g} x stable {stable.p99_ms:g} ms"
        )
    return reasons


def _figures(window: version_health.Window) -> dict[str, Any]:
    return {
        "requests": window.requests,
        "failures": window.failures,
        "input_failures": window.input_failures,
        "error_rate": round(window.error_rate, 4),
        "p99_ms": window.p99_ms,
    }


def evaluate(model: Model) -> list[str]:
    """Judge the model's canaries now and cut those that break its policy; the versions cut
    by this call."""
    policy = policy_parse(model.canary_policy)
    if policy is None or model.stable_version_id is None:
        return []
    canaries = list(
        model.versions.filter(
            state=ModelVersion.State.ACTIVE, is_shadow=False, traffic_weight__gt=0
        ).exclude(pk=model.stable_version_id)
    )
    cut = []
    now = timezone.now()
    for canary in canaries:
        seconds = float(policy.window_seconds)
        if canary.serving_since is not None:
            seconds = min(seconds, max(0.0, (now - canary.serving_since).total_seconds()))
        found = version_health.windows([canary.pk, model.stable_version_id], seconds)
        reasons = judge(policy, found[canary.pk], found[model.stable_version_id])
        if not reasons:
            continue
        figures = {
            "reasons": reasons,
            "window_seconds": round(seconds, 1),
            "policy": policy.as_dict(),
            "canary_window": _figures(found[canary.pk]),
            "stable_window": _figures(found[model.stable_version_id]),
        }
        if model.canary_cut(canary.pk, judged_since=canary.serving_since, figures=figures):
            kind = "error_rate" if reasons[0].startswith("error rate") else "p99"
            CANARY_ROLLBACKS.labels(model.name, canary.version, kind).inc()
            log.warning(
                "canary %s:%s rolled back (weight %s to 0, stable takes it): %s",
                model.name,
                canary.version,
                canary.traffic_weight,
                "; ".join(reasons),
            )
            cut.append(canary.version)
    return cut


def evaluate_all(names: set[str] | None = None) -> list[str]:
    """Judge every model with a canary policy (or only those named); ``model:version`` of each
    canary cut."""
    models = Model.objects.exclude(canary_policy={})
    if names is not None:
        models = models.filter(name__in=names)
    cut = []
    for model in models:
        cut += [f"{model.name}:{version}" for version in evaluate(model)]
    return cut


# --- the web process's watcher -------------------------------------------------------------

_watched: dict[str, float] = {}  # model name -> when its routing table last asked (monotonic)
_watched_lock = threading.Lock()


def watch(name: str) -> None:
    """Judge ``name`` in this process about once a second while it keeps being routed (its
    routing table was loaded with a policy and a canary)."""
    with _watched_lock:
        _watched[name] = time.monotonic()
    if not _watcher.started:
        _watcher.start()


def _watch_once() -> None:
    now = time.monotonic()
    with _watched_lock:
        for name in [n for n, at in _watched.items() if now - at > WATCH_SECONDS]:
            del _watched[name]
        names = set(_watched)
    if not names:
        connections.close_all()  # this thread's: an idle watcher holds no connection
        return
    try:
        evaluate_all(names)
    except Exception:  # the watcher outlives a database or cache hiccup; next turn retries
        log.exception("canary watch: judging %s failed", sorted(names))
    finally:
        close_old_connections()  # a thread of its own: no connection outlives its age


_watcher = Periodic("canary-watch", lambda: settings.INFERENCE_CANARY_INTERVAL_SECONDS, _watch_once)
