"""The unary inference flow (design 3.1), both halves.

Web: route → validate the input against the chosen version's schema → take a slot on the
version's queue (or 503) → queue ``inference_predict`` with a request id and a deadline → wait
for the reply → record the outcome on the version's circuit breaker. Shadow versions get a copy
whose answer nobody waits for.

Worker: drop expired work → the process's model cache → the version's batcher → publish.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache
from django.conf import settings
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.db import connection
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from rest_framework import exceptions

from config.exceptions import GatewayTimeout, ServiceUnavailable
from inference import backpressure, selectors
from inference.batcher import DeadlineExceeded
from inference.cache import ModelCache
from inference.models import Model
from inference.replies import reply_publish, reply_wait
from inference.router import CircuitBreaker, NoRoute, route
from inference.runtimes import RuntimeUnavailable, VersionSpec
from inference.runtimes.base import UpstreamError
from inference.schema import validate_input
from tenants.models import Tenant

log = logging.getLogger(__name__)


class QueueFull(ServiceUnavailable):
    default_detail = "The model's queue is full; retry later."
    problem_slug = "queue-full"


class ModelUnavailable(ServiceUnavailable):
    default_detail = "No version of this model can serve now."
    problem_slug = "model-unavailable"


class InferenceFailed(exceptions.APIException):
    status_code = 502
    default_detail = "The model failed on this input."
    default_code = "inference_failed"
    problem_slug = "inference-failed"


@dataclass(frozen=True)
class Answer:
    request_id: str
    model: str
    version: str
    output: dict[str, Any]
    batch_size: int
    latency_ms: float
    failed_over: bool


def _deadline(timeout_ms: int | None) -> float:
    ms = timeout_ms or settings.INFERENCE_DEFAULT_TIMEOUT_MS
    return time.time() + min(ms, settings.INFERENCE_MAX_TIMEOUT_MS) / 1000


def enqueue(
    *, version_id: int, queue: str, payload: dict[str, Any], request_id: str, deadline: float
) -> None:
    """Queue the work on the version's queue; Celery itself also discards it after the
    deadline, so a backlog never spends worker time on answers nobody waits for."""
    from inference.tasks import inference_predict

    inference_predict.apply_async(
        args=(version_id, payload, request_id, deadline),
        queue=queue,
        expires=max(1.0, deadline - time.time()),
    )


def infer(
    *,
    model: Model,
    tenant: Tenant | None,
    data: dict[str, Any],
    version: str | None = None,
    timeout_ms: int | None = None,
) -> Answer:
    started = time.perf_counter()
    # Always our own id: the reply channel must not be addressable by a client-chosen id.
    request_id = uuid.uuid4().hex
    breaker = CircuitBreaker()
    sticky_key = str(tenant.pk) if (tenant is not None and model.sticky_routing) else None
    try:
        plan = route(
            model.name,
            selectors.candidates(model),
            version=version,
            sticky_key=sticky_key,
            breaker=breaker,
        )
    except NoRoute as exc:
        raise ModelUnavailable(str(exc)) from exc
    chosen = selectors.version_of(model, plan.primary.id)
    try:
        payload = validate_input(chosen.input_schema, data)
    except exceptions.ValidationError as exc:
        raise exceptions.ValidationError({"input": exc.detail}) from exc
    deadline = _deadline(timeout_ms)
    retry_after = settings.INFERENCE_RETRY_AFTER_SECONDS
    try:
        backpressure.admit(chosen.queue, request_id, deadline)
        try:
            enqueue(
                version_id=chosen.pk,
                queue=chosen.queue,
                payload=payload,
                request_id=request_id,
                deadline=deadline,
            )
            for shadow in plan.shadows:
                _shadow_copy(model, shadow.id, payload, deadline)
            reply = reply_wait(request_id, deadline - time.time())
        finally:
            backpressure.release(chosen.queue, request_id)
    except backpressure.QueueFull as exc:
        full = QueueFull(f"Queue {exc.queue} is full ({exc.bound} requests in flight).")
        full.wait = retry_after  # type: ignore[attr-defined]
        raise full from exc
    except (RedisError, KombuError, OSError) as exc:
        log.exception("inference queue unreachable", extra={"queue": chosen.queue})
        down = ServiceUnavailable("The inference queue is unreachable; retry later.")
        down.wait = retry_after  # type: ignore[attr-defined]
        raise down from exc
    if reply is None or time.time() > deadline:
        breaker.record(chosen.pk, ok=False)
        raise GatewayTimeout(f"No answer from {model.name}:{chosen.version} before the deadline.")
    if not reply.get("ok"):
        status = int(reply.get("status", 502))
        if status != 504:  # the deadline is the client's choice, not the version's fault
            breaker.record(chosen.pk, ok=False)
        error = str(reply.get("error", "inference failed"))
        if status == 503:
            unavailable = ModelUnavailable(error)
            if reply.get("retry_after"):  # an upstream's Retry-After or its circuit's cooldown
                unavailable.wait = math.ceil(float(reply["retry_after"]))  # type: ignore[attr-defined]
            raise unavailable
        if status == 504:
            raise GatewayTimeout(error)
        raise InferenceFailed(error)
    breaker.record(chosen.pk, ok=True)
    return Answer(
        request_id=request_id,
        model=model.name,
        version=chosen.version,
        output=reply["output"],
        batch_size=int(reply.get("batch_size", 1)),
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        failed_over=plan.failed_over_from is not None,
    )


def _shadow_copy(model: Model, version_id: int, payload: dict[str, Any], deadline: float) -> None:
    """Best effort: a full queue or a broker error skips the copy, never the real request."""
    shadow = selectors.version_of(model, version_id)
    rid = f"shadow-{uuid.uuid4().hex}"
    try:
        backpressure.admit(shadow.queue, rid, deadline)
    except backpressure.QueueFull:
        log.info("shadow copy to %s skipped: queue full", shadow)
        return
    except (RedisError, OSError):
        log.exception("shadow copy to %s skipped: admission store unreachable", shadow)
        return
    # The worker frees the shadow's slot when it is done (or the deadline sweep does).
    try:
        from inference.tasks import inference_predict

        inference_predict.apply_async(
            args=(shadow.pk, payload, rid, deadline),
            kwargs={"shadow": True},
            queue=shadow.queue,
            expires=max(1.0, deadline - time.time()),
        )
    except Exception:
        log.exception("shadow copy to %s failed", shadow)


# --- worker side ------------------------------------------------------------------------------


def _read_artifact(spec: VersionSpec) -> bytes | None:
    if not spec.artifact_name:
        return None
    with default_storage.open(spec.artifact_name, "rb") as fh:
        data: bytes = fh.read()
    return data


_models = ModelCache(max_models=settings.INFERENCE_CACHE_MAX_MODELS, read_artifact=_read_artifact)
# Specs are immutable per id + checksum; re-reading them per task would cost a query each.
_specs: TTLCache[int, VersionSpec] = TTLCache(maxsize=1024, ttl=30)
_specs_lock = threading.Lock()


def model_cache() -> ModelCache:
    return _models


def _spec(version_id: int) -> VersionSpec:
    with _specs_lock:
        spec = _specs.get(version_id)
    if spec is None:
        spec = selectors.version_spec(version_id)
        with _specs_lock:
            _specs[version_id] = spec
    return spec


def preload(queues: set[str]) -> list[str]:
    """Load and warm the active versions this worker serves, before the first request asks.
    Best effort: a version that cannot load is logged and left for its first request."""
    done: list[str] = []
    try:
        for version_id in selectors.active_version_ids(queues)[: _models.max_models]:
            try:
                spec = _spec(version_id)
                _models.get(spec)
                done.append(spec.label)
            except Exception:
                log.exception("preloading version %s failed", version_id)
    finally:
        connection.close()  # this runs on a thread of its own
    return done


def predict(
    *, version_id: int, payload: dict[str, Any], request_id: str, deadline: float, shadow: bool
) -> None:
    """Run one request through the version's batcher and publish its reply (worker side)."""
    started = time.perf_counter()
    if time.time() >= deadline:
        # Dropped, not run: the view has already answered 504.
        log.info("dropped expired request %s for version %s", request_id, version_id)
        return
    reply: dict[str, Any]
    spec: VersionSpec | None = None
    try:
        spec = _spec(version_id)
        loaded = _models.get(spec)
        output, batch_size = loaded.batcher.submit(payload, deadline=deadline)
        reply = {"ok": True, "output": output, "batch_size": batch_size}
    except DeadlineExceeded:
        log.info("dropped request %s: deadline passed while batching", request_id)
        return
    except RuntimeUnavailable as exc:
        reply = {"ok": False, "status": 503, "error": str(exc)}
        if getattr(exc, "retry_after", None):
            reply["retry_after"] = exc.retry_after  # type: ignore[attr-defined]
    except UpstreamError as exc:  # a remote runtime's upstream: 502, or 504 on its timeout
        log.warning("version %s: upstream failed: %s", version_id, exc)
        reply = {"ok": False, "status": exc.status, "error": str(exc)}
    except Exception as exc:
        log.exception("inference failed for version %s", version_id)
        reply = {"ok": False, "status": 502, "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        if shadow and spec is not None:
            # Nobody waits for a shadow's answer, so its queue slot is freed here.
            backpressure.release(spec.queue, request_id)
    reply["ms"] = round((time.perf_counter() - started) * 1000, 2)
    if shadow:
        _shadow_measure(version_id, reply)
        return
    reply_publish(request_id, reply)


def _shadow_measure(version_id: int, reply: dict[str, Any]) -> None:
    """A shadow's answer is discarded; its count, errors and latency are kept."""
    prefix = f"inference:shadow:{version_id}"
    for name, amount in (
        ("count", 1),
        ("errors", 0 if reply["ok"] else 1),
        ("ms_total", int(reply["ms"])),
    ):
        key = f"{prefix}:{name}"
        cache.add(key, 0, timeout=None)
        try:
            cache.incr(key, amount)
        except ValueError:
            cache.set(key, amount, timeout=None)
    log.info("shadow %s answered ok=%s in %s ms", version_id, reply["ok"], reply["ms"])


def shadow_stats(version_id: int) -> dict[str, int]:
    prefix = f"inference:shadow:{version_id}"
    got = cache.get_many([f"{prefix}:{n}" for n in ("count", "errors", "ms_total")])
    return {n: int(got.get(f"{prefix}:{n}", 0)) for n in ("count", "errors", "ms_total")}
