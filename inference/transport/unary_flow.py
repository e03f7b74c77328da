"""The unary inference flow (design 3.1), both halves.

Web: route (the process's routing table) → validate the input against the chosen version's
schema → join the version's next batch (:mod:`inference.transport.dispatch`: one queue-slot round
trip and one ``inference_predict_batch`` message per batch; 503 when the queue is full) → wait for
the reply → record the outcome on the version's circuit breaker. Shadow versions get a copy whose
answer nobody waits for; it is compared with the primary's (:mod:`inference.transport.shadows`).

Worker: drop expired work → the process's model cache → the version's batcher → one answer
message per batch (:func:`predict_batch`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from rest_framework import exceptions

from inference.catalog import selectors, version_health
from inference.catalog.router import NoRoute, NotServed, Route, route
from inference.catalog.selectors import RoutingTable
from inference.models import Model
from inference.rules import outcome_kinds
from inference.rules.breaker import CircuitBreaker
from inference.transport import admission, dispatch, shadows
from inference.worker import loading
from plumbing.exceptions import GatewayTimeout, ServiceUnavailable
from plumbing.logcontext import request_id_var
from plumbing.presence import NoWorker, served
from tenants.limits import PlanTicket
from tenants.models import Tenant

log = logging.getLogger(__name__)


class QueueFull(ServiceUnavailable):
    default_detail = "The model's queue is full; retry later."
    problem_slug = "queue-full"


class ModelLoading(ServiceUnavailable):
    """503: the request's model was still loading when its deadline and the load allowance
    (``INFERENCE_LOAD_ALLOWANCE_SECONDS``) had passed."""

    default_detail = "The model is still loading; retry later."
    problem_slug = "model-loading"


class ModelUnavailable(ServiceUnavailable):
    default_detail = "No version of this model can serve now."
    problem_slug = "model-unavailable"

    @classmethod
    def no_route(cls, exc: NoRoute) -> ModelUnavailable:
        """The 503 of a request no version can take, with ``Retry-After`` when a circuit's
        cooldown is why (the cooldown left, at least a second)."""
        unavailable = cls(str(exc))
        if exc.retry_after is not None:
            unavailable.wait = max(1, math.ceil(exc.retry_after))  # type: ignore[attr-defined]
        return unavailable


def unroutable(exc: NoRoute) -> exceptions.APIException:
    """The answer when no version takes a request: 422 naming ``version`` when it pinned one
    the model does not serve, else 503 ``model-unavailable``."""
    if isinstance(exc, NotServed):
        return exceptions.ValidationError({"version": [str(exc)]})
    return ModelUnavailable.no_route(exc)


class InferenceFailed(exceptions.APIException):
    """A remote runtime's upstream failed (its status is said, its text is not)."""

    status_code = 502
    default_detail = "The model's upstream failed."
    default_code = "inference_failed"
    problem_slug = "inference-failed"


class InferenceError(exceptions.APIException):
    """The engine raised on this request's input: a fixed answer naming the request id under
    which the engine's own text is logged (never returned)."""

    status_code = 500
    default_detail = "The model failed on this input."
    default_code = "inference_error"
    problem_slug = "inference-error"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"The model failed on this input; its error is logged under request id {request_id}."
        )
        self.problem_extensions = {"request_id": request_id}


@dataclass(frozen=True)
class Answer:
    request_id: str
    model: str
    version: str
    output: dict[str, Any]
    batch_size: int
    latency_ms: float
    failed_over: bool

    def body(self) -> dict[str, Any]:
        """The answer of ``POST /v1/models/{name}/infer`` (the view and the front door)."""
        return {
            "id": self.request_id,
            "object": "inference",
            "model": self.model,
            "version": self.version,
            "output": self.output,
            "batch_size": self.batch_size,
            "latency_ms": self.latency_ms,
            "failed_over": self.failed_over,
        }


def deadline_for(timeout_ms: int | None) -> float:
    """The wall-clock deadline of a request asking ``timeout_ms`` (the default when None,
    ``INFERENCE_MAX_TIMEOUT_MS`` at most)."""
    ms = timeout_ms or settings.INFERENCE_DEFAULT_TIMEOUT_MS
    return time.time() + min(ms, settings.INFERENCE_MAX_TIMEOUT_MS) / 1000


def pick_route(
    model: Model | RoutingTable,
    tenant: Tenant | None,
    version: str | None,
    breaker: CircuitBreaker,
) -> tuple[RoutingTable, Route]:
    """The routing table of ``model`` and the route a request takes (pinned ``version``,
    the tenant's sticky point, past open circuits); the API's 503/422 when there is none."""
    table = model if isinstance(model, RoutingTable) else selectors.routing_table(model.name)
    if table is None:
        raise ModelUnavailable(f"{model.name} has no version taking traffic")
    sticky_key = str(tenant.pk) if (tenant is not None and table.sticky_routing) else None
    try:
        plan = route(
            table.name,
            table.candidates,
            version=version,
            sticky_key=sticky_key,
            breaker=breaker,
        )
    except NoRoute as exc:
        raise unroutable(exc) from exc
    return table, plan


@dataclass(frozen=True)
class _Planned:
    """A request routed and validated, ready to join its version's next batch."""

    request_id: str
    table: RoutingTable
    chosen: selectors.VersionRoute
    shadows: tuple[selectors.VersionRoute, ...]
    failed_over: bool
    payload: dict[str, Any]
    deadline: float
    breaker: CircuitBreaker
    started: float
    arrived: float  # wall clock, as the loading marks say when a load ended
    caller: str | None  # the tenant, as the breaker and the health stats count callers


def _plan(
    model: Model | RoutingTable,
    tenant: Tenant | None,
    data: dict[str, Any],
    version: str | None,
    timeout_ms: int | None,
) -> _Planned:
    started = time.perf_counter()
    # Always our own id: the reply channel must not be addressable by a client-chosen id.
    request_id = uuid.uuid4().hex
    breaker = CircuitBreaker()
    table, plan = pick_route(model, tenant, version, breaker)
    chosen = table.versions[plan.primary.id]
    try:
        payload = chosen.validator.validate(data)
    except exceptions.ValidationError as exc:
        raise exceptions.ValidationError({"input": exc.detail}) from exc
    return _Planned(
        request_id=request_id,
        table=table,
        chosen=chosen,
        shadows=tuple(table.versions[shadow.id] for shadow in plan.shadows),
        failed_over=plan.failed_over_from is not None,
        payload=payload,
        deadline=deadline_for(timeout_ms),
        breaker=breaker,
        started=started,
        arrived=time.time(),
        caller=str(tenant.pk) if tenant is not None else None,
    )


def _unreachable(planned: _Planned, exc: BaseException) -> exceptions.APIException:
    """What a refused or unsendable batch answers: 503 with Retry-After."""
    retry_after = settings.INFERENCE_RETRY_AFTER_SECONDS
    if isinstance(exc, admission.QueueFull):
        full = QueueFull(f"Queue {exc.queue} is full ({exc.bound} requests in flight).")
        full.wait = retry_after  # type: ignore[attr-defined]
        return full
    log.error("inference queue unreachable", extra={"queue": planned.chosen.queue}, exc_info=exc)
    down = ServiceUnavailable("The inference queue is unreachable; retry later.")
    down.wait = retry_after  # type: ignore[attr-defined]
    return down


_UNREACHABLE = (admission.QueueFull, RedisError, KombuError, OSError)


def _require_worker(planned: _Planned) -> None:
    """503 ``no-worker`` at once when nothing consumes the chosen version's queue: queued, the
    request would only wait out its deadline. Says nothing of the version (its breaker's
    probe, if this request held it, is freed)."""
    queue = planned.chosen.queue
    if not served(queue):
        _outcome(planned, outcome_kinds.UNAVAILABLE, error=f"no worker serves queue {queue}")
        raise NoWorker(queue)


def _outcome(
    planned: _Planned, outcome: str, *, latency_ms: float | None = None, error: str | None = None
) -> None:
    """Record what happened to the request: the version's breaker and its health stats (and
    with them the outcome metric); in process, but for the breaker's write after a failure."""
    chosen = planned.chosen
    if outcome == outcome_kinds.OK:
        planned.breaker.record(chosen.id, ok=True)
    else:
        planned.breaker.record(chosen.id, ok=False, outcome=outcome, caller=planned.caller)
    version_health.record(
        chosen.id,
        outcome=outcome,
        latency_ms=latency_ms,
        caller=planned.caller,
        error=error,
        labels=(planned.table.name, chosen.version),
    )


def _loading(planned: _Planned) -> bool:
    """Whether the request's version is loading in a worker (asked once its deadline passed
    unanswered): then it may wait ``INFERENCE_LOAD_ALLOWANCE_SECONDS`` more, and the worker
    runs its late items that waited for the load (:func:`predict_batch`)."""
    try:
        return loading.in_progress(planned.chosen.id, since=planned.arrived)
    except (RedisError, OSError):
        log.warning("reading the loading mark of version %s failed", planned.chosen.id)
        return False


LOAD_POLL_SECONDS = 0.5  # how often a request waiting for its model's load looks at the mark


def _allowance_left(planned: _Planned) -> float:
    return planned.deadline + settings.INFERENCE_LOAD_ALLOWANCE_SECONDS - time.time()


def _conclude(
    planned: _Planned,
    reply: dict[str, Any] | None,
    pending: dispatch.Pending,
    *,
    loading_late: bool = False,
) -> Answer:
    """The answer for the worker's ``reply`` (None: none came before the deadline, or before
    the load allowance when ``loading_late``)."""
    chosen = planned.chosen
    label = f"{planned.table.name}:{chosen.version}"
    if reply is None and dispatch.gave_up(chosen, pending):
        # No worker took it: the queue had nobody serving it, which says nothing of the
        # version (docs/inference.md, "The circuit breaker").
        _outcome(planned, outcome_kinds.UNAVAILABLE, error=f"no worker took it from {chosen.queue}")
        down = ServiceUnavailable(
            f"No worker took the request from queue {chosen.queue} before its deadline; "
            "retry later."
        )
        down.wait = settings.INFERENCE_RETRY_AFTER_SECONDS  # type: ignore[attr-defined]
        raise down
    if reply is None and loading_late:
        # Not the version's failure, nor a timeout of its engine: it is not loaded yet.
        _outcome(planned, outcome_kinds.UNAVAILABLE, error="still loading past the allowance")
        still = ModelLoading(f"{label} is still loading; retry later.")
        still.wait = settings.INFERENCE_RETRY_AFTER_SECONDS  # type: ignore[attr-defined]
        raise still
    until = planned.deadline + (settings.INFERENCE_LOAD_ALLOWANCE_SECONDS if loading_late else 0)
    if reply is None or time.time() > until:
        _outcome(planned, outcome_kinds.TIMEOUT, error="no answer before the deadline")
        raise GatewayTimeout(f"No answer from {label} before the deadline.")
    latency_ms = round((time.perf_counter() - planned.started) * 1000, 2)
    if not reply.get("ok"):
        status = int(reply.get("status", 502))
        if status == 422:  # the engine's own check refused the input before running it
            raise exceptions.ValidationError({"input": reply.get("errors") or {}})
        error = str(reply.get("error", "inference failed"))
        internal = reply.get("internal")
        if internal:
            log.warning("%s failed inference %s: %s", label, planned.request_id, internal)
        _outcome(
            planned,
            str(reply.get("outcome", outcome_kinds.ENGINE_ERROR)),
            error=str(internal or error),
        )
        if status == 503:
            unavailable = ModelUnavailable(error)
            if reply.get("retry_after"):  # an upstream's Retry-After or its circuit's cooldown
                unavailable.wait = math.ceil(float(reply["retry_after"]))  # type: ignore[attr-defined]
            raise unavailable
        if status == 504:
            raise GatewayTimeout(error)
        if status == 500:
            request_id = request_id_var.get()
            # Outside an HTTP request (a pool thread of the OpenAI endpoints): our own id.
            raise InferenceError(planned.request_id if request_id == "-" else request_id)
        raise InferenceFailed(error)
    _outcome(planned, outcome_kinds.OK, latency_ms=latency_ms)
    return Answer(
        request_id=planned.request_id,
        model=planned.table.name,
        version=chosen.version,
        output=reply["output"],
        batch_size=int(reply.get("batch_size", 1)),
        latency_ms=latency_ms,
        failed_over=planned.failed_over,
    )


def infer(
    *,
    model: Model | RoutingTable,
    tenant: Tenant | None,
    data: dict[str, Any],
    version: str | None = None,
    timeout_ms: int | None = None,
    limits: PlanTicket | None = None,
) -> Answer:
    """Answer one request (web side). ``model`` is a Model row or its routing table; either
    way routing reads this process's routing table (``INFERENCE_ROUTING_CACHE_SECONDS``).
    ``limits``: the request's rate limits and quota, counted with its web-side batch (429 when
    they refuse it); None when the caller counted them already."""
    planned = _plan(model, tenant, data, version, timeout_ms)
    _require_worker(planned)
    copies: list[str] = []
    reply = None
    try:
        pending = dispatch.call(
            planned.chosen,
            planned.payload,
            request_id=planned.request_id,
            deadline=planned.deadline,
            ticket=limits,
        )
        if planned.shadows:
            copies = shadows.send(
                planned.table.name, planned.shadows, planned.payload, planned.deadline
            )
        # Refusals of a batch another thread led come here (the queue's bound, its limits).
        reply = dispatch.wait(pending, planned.deadline - time.time())
        loading_late = reply is None and _loading(planned)
        # Its model is loading: the allowance, not a 504 (see _loading), for as long as the
        # mark says so — a load that ended leaves the request to the answers below.
        while loading_late and reply is None and _allowance_left(planned) > 0:
            reply = dispatch.wait(pending, min(LOAD_POLL_SECONDS, _allowance_left(planned)))
            loading_late = reply is not None or _loading(planned)
    except _UNREACHABLE as exc:
        raise _unreachable(planned, exc) from exc
    finally:
        if copies:
            shadows.primary_answered(copies, reply)
    return _conclude(planned, reply, pending, loading_late=loading_late)


async def infer_async(
    *,
    model: RoutingTable,
    tenant: Tenant | None,
    data: dict[str, Any],
    version: str | None = None,
    timeout_ms: int | None = None,
    limits: PlanTicket | None = None,
) -> Answer:
    """:func:`infer` for a request served on an event loop (:mod:`inference.api.frontdoor`):
    it joins the version's batch on the loop (:class:`inference.transport.dispatch.LoopCollector`)
    and awaits its answer instead of blocking a thread; shadow copies go from a thread."""
    planned = _plan(model, tenant, data, version, timeout_ms)
    _require_worker(planned)
    copies: list[str] = []
    reply = None
    try:
        pending = dispatch.call_on_loop(
            planned.chosen,
            planned.payload,
            request_id=planned.request_id,
            deadline=planned.deadline,
            ticket=limits,
        )
        if planned.shadows:
            copies = shadows.expect(planned.table.name, planned.shadows, planned.deadline)
            loop = asyncio.get_running_loop()
            for shadow, rid in zip(planned.shadows, copies, strict=True):
                loop.run_in_executor(
                    None, shadows.send_copy, shadow, rid, planned.payload, planned.deadline
                )
        reply = await dispatch.wait_on_loop(pending, planned.deadline - time.time())
        loading_late = reply is None and _loading(planned)  # late requests only
        while loading_late and reply is None and _allowance_left(planned) > 0:
            left = min(LOAD_POLL_SECONDS, _allowance_left(planned))
            reply = await dispatch.wait_on_loop(pending, left)
            loading_late = reply is not None or _loading(planned)
    except _UNREACHABLE as exc:
        raise _unreachable(planned, exc) from exc
    finally:
        if copies:
            shadows.primary_answered(copies, reply)
    return _conclude(planned, reply, pending, loading_late=loading_late)
