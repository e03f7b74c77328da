"""Reads of the registry: what a tenant may see, what routes, what a worker loads."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Prefetch, QuerySet
from django.http import Http404

from inference.catalog import canary, version_health
from inference.catalog.router import Candidate
from inference.models import Model, ModelEvent, ModelVersion
from inference.rules.breaker import CircuitBreaker
from inference.rules.input_schema import Validator, validator_for
from inference.runtimes import VersionSpec
from inference.runtimes import unavailable_reason as _runtime_reason
from tenants.models import Tenant


def version_unavailable(version: ModelVersion) -> str | None:
    """Why this version cannot serve in this process ("unavailable: … — install with …")."""
    return _runtime_reason(version.runtime, version.runtime_options)


@dataclass(frozen=True)
class VersionState:
    """What a version looks like to its callers now: its circuit, its recent outcomes
    (:mod:`inference.catalog.version_health`, over ``INFERENCE_HEALTH_WINDOW_SECONDS``) and why it
    would not be served now (None: it would)."""

    circuit: str  # closed, open, half_open
    circuit_reason: str | None  # the outcome that opened it ("callers": several tenants')
    retry_after: float | None  # seconds until an open circuit half-opens
    health: version_health.Window
    unavailable: str | None

    @property
    def available(self) -> bool:
        return self.unavailable is None

    def summary(self) -> str:
        """``circuit closed · last 5 min: 120 requests, 0.8 % errors, p99 12.3 ms`` (the
        admin's and ``listmodels``' line)."""
        seconds = settings.INFERENCE_HEALTH_WINDOW_SECONDS
        window = f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"
        circuit = self.circuit.replace("_", "-")
        if self.circuit_reason:
            circuit += f" ({self.circuit_reason})"
        health = self.health
        p99 = "-" if health.p99_ms is None else f"{health.p99_ms:g} ms"
        return (
            f"circuit {circuit} · last {window}: {health.requests} requests, "
            f"{health.error_rate * 100:.1f} % errors, p99 {p99}"
        )

    def last_error(self) -> str | None:
        """``2026-01-02 10:00:00Z (input_error): IndexError: …`` — operators only."""
        health = self.health
        if health.last_error is None or health.last_error_at is None:
            return None
        at = datetime.fromtimestamp(health.last_error_at, UTC)
        return f"{at:%Y-%m-%d %H:%M:%S}Z ({health.last_error_outcome}): {health.last_error}"


def version_states(versions: Iterable[ModelVersion]) -> dict[int, VersionState]:
    """The state of each version (one round trip for the health windows; circuits from this
    process's view of them, at most ``INFERENCE_ROUTING_CACHE_SECONDS`` old)."""
    rows = list(versions)
    windows = version_health.windows([v.pk for v in rows], settings.INFERENCE_HEALTH_WINDOW_SECONDS)
    breaker = CircuitBreaker()
    states = {}
    for v in rows:
        circuit = breaker.state(v.pk)
        left = breaker.cooldown_left(v.pk) if circuit == CircuitBreaker.OPEN else None
        unavailable = version_unavailable(v)
        if unavailable is None and v.state != ModelVersion.State.ACTIVE:
            unavailable = f"version {v.version} is not active ({v.state})"
        if unavailable is None and left is not None:
            unavailable = (
                f"version {v.version} is failing (circuit open; retry in {math.ceil(left)} s)"
            )
        states[v.pk] = VersionState(
            circuit=circuit,
            circuit_reason=breaker.reason(v.pk) if circuit != CircuitBreaker.CLOSED else None,
            retry_after=left,
            health=windows[v.pk],
            unavailable=unavailable,
        )
    return states


def model_available(model: Model, states: dict[int, VersionState]) -> bool:
    """Whether a request for the (prefetched) model would be served now: a version taking
    traffic is available, or the stable one its requests fail over to."""
    for v in model.versions.all():
        takes_traffic = v.traffic_weight > 0 and not v.is_shadow
        if (takes_traffic or v.pk == model.stable_version_id) and states[v.pk].available:
            return True
    return False


def _with_versions(queryset: QuerySet[Model]) -> QuerySet[Model]:
    live = ModelVersion.objects.exclude(state=ModelVersion.State.RETIRED).order_by("created_at")
    return queryset.prefetch_related(Prefetch("versions", queryset=live)).select_related(
        "stable_version"
    )


def models_for_tenant(tenant: Tenant | None) -> list[Model]:
    """Models the tenant's plan allows (every model for staff: ``tenant`` None)."""
    models = list(_with_versions(Model.objects.order_by("name")))
    if tenant is None:
        return models
    return [m for m in models if tenant.allows_model(m.name)]


def model_for_tenant(name: str, tenant: Tenant | None) -> Model:
    """The model, or 404 when it does not exist or the tenant's plan does not allow it."""
    if tenant is not None and not tenant.allows_model(name):
        raise Http404(name)
    model = _with_versions(Model.objects.filter(name=name)).first()
    if model is None:
        raise Http404(name)
    return model


def candidates(model: Model) -> list[Candidate]:
    """The active versions of a (prefetched) model, as the router sees them."""
    return [
        Candidate(
            id=v.pk,
            version=v.version,
            weight=v.traffic_weight,
            stable=v.pk == model.stable_version_id,
            shadow=v.is_shadow,
            unavailable=version_unavailable(v),
        )
        for v in model.versions.all()
        if v.state == ModelVersion.State.ACTIVE
    ]


def version_of(model: Model, version_id: int) -> ModelVersion:
    return next(v for v in model.versions.all() if v.pk == version_id)


def version_spec(version_id: int) -> VersionSpec:
    v = ModelVersion.objects.select_related("model").get(pk=version_id)
    return VersionSpec(
        id=v.pk,
        model=v.model.name,
        version=v.version,
        runtime=v.runtime,
        checksum=v.checksum,
        artifact_name=v.artifact.name or "",
        options=dict(v.runtime_options),
        device=v.device,
        max_batch_size=v.max_batch_size,
        max_delay_ms=v.max_delay_ms,
        queue=v.queue,
    )


def active_version_ids(queues: set[str]) -> list[int]:
    """Versions taking traffic (or shadowing) on these queues, busiest first."""
    rows = ModelVersion.objects.filter(state=ModelVersion.State.ACTIVE, queue__in=queues)
    return [
        v.pk
        for v in rows.order_by("-traffic_weight", "-created_at")
        if (v.traffic_weight or v.is_shadow) and version_unavailable(v) is None
    ]


def active_queues() -> set[str]:
    """The queues of the versions taking traffic (or shadowing): where workers are needed."""
    rows = ModelVersion.objects.filter(state=ModelVersion.State.ACTIVE)
    return set(rows.values_list("queue", flat=True).distinct())


def model_events(model: Model, *, limit: int = 50) -> list[ModelEvent]:
    return list(model.events.select_related("version")[:limit])


# --- the routing table of the unary hot path ---------------------------------------------------


@dataclass(frozen=True)
class VersionRoute:
    """What the web tier needs of a version to validate and queue a request (no ORM)."""

    id: int
    version: str
    queue: str
    input_schema: dict[str, Any]
    validator: Validator  # the input schema's, compiled once (inference.rules.input_schema)
    max_batch_size: int
    max_delay_ms: int


@dataclass(frozen=True)
class RoutingTable:
    """A model as the unary path sees it: the router's candidates and each active version.
    Duck-types as a :class:`Model` for ``unary_flow.infer`` (``name``, ``sticky_routing``)."""

    name: str
    task: str
    sticky_routing: bool
    candidates: tuple[Candidate, ...]
    versions: dict[int, VersionRoute]


_routes: dict[str, tuple[float, RoutingTable | None]] = {}
_routes_lock = threading.Lock()


def routing_table_build(model: Model) -> RoutingTable:
    """The table of a model whose versions are prefetched (``_with_versions``)."""
    return RoutingTable(
        name=model.name,
        task=model.task,
        sticky_routing=model.sticky_routing,
        candidates=tuple(candidates(model)),
        versions={
            v.pk: VersionRoute(
                id=v.pk,
                version=v.version,
                queue=v.queue,
                input_schema=v.input_schema,
                validator=validator_for(v.input_schema),
                max_batch_size=v.max_batch_size,
                max_delay_ms=v.max_delay_ms,
            )
            for v in model.versions.all()
            if v.state == ModelVersion.State.ACTIVE
        },
    )


def routing_table(name: str) -> RoutingTable | None:
    """The model's routing table from this process's copy (at most
    ``INFERENCE_ROUTING_CACHE_SECONDS`` old; changes made in this process drop it at once,
    see :func:`forget_routes`), else from the database (two queries). None: no such model."""
    cached = routing_table_cached(name)
    if cached is not None and not cached[0]:
        return cached[1]
    # Not cached, or stale and this thread reloads it (the others route on the old table).
    return routing_table_reload(name)


def routing_table_cached(name: str) -> tuple[bool, RoutingTable | None] | None:
    """This process's copy of the model's routing table, without a query: None when there is
    none; else ``(due, table)``, where ``due`` says the copy is stale and the caller is the
    one to reload it (:func:`routing_table_reload`) — everyone else keeps the copy
    meanwhile."""
    now = time.monotonic()
    ttl = settings.INFERENCE_ROUTING_CACHE_SECONDS
    hit = _routes.get(name)  # no lock on the hot path: a dict read is atomic
    if hit is not None and now - hit[0] < ttl:
        return False, hit[1]
    with _routes_lock:
        hit = _routes.get(name)
        if hit is None:
            return None
        if now - hit[0] >= ttl:
            _routes[name] = (now, hit[1])  # claimed: nobody else reloads it meanwhile
            return True, hit[1]
        return False, hit[1]


def routing_table_reload(name: str) -> RoutingTable | None:
    """Read the model's routing table from the database (two queries) into the process's
    copy."""
    now = time.monotonic()
    model = _with_versions(Model.objects.filter(name=name)).first()
    table = None if model is None else routing_table_build(model)
    with _routes_lock:
        _routes[name] = (now, table)
    if (
        model is not None
        and model.canary_policy
        and table is not None
        and any(c.weight and not c.stable and not c.shadow for c in table.candidates)
    ):
        canary.watch(name)  # this process routes a canary under a policy: it judges it
    return table


def routing_table_for_tenant(name: str, tenant: Tenant | None) -> RoutingTable:
    """Like :func:`model_for_tenant` (404 for an unknown or disallowed model), from the
    routing table: no query while the table is fresh."""
    if tenant is not None and not tenant.allows_model(name):
        raise Http404(name)
    table = routing_table(name)
    if table is None:
        raise Http404(name)
    return table


def forget_routes(**kwargs: Any) -> None:
    """Drop every cached routing table (a registry row changed in this process; a signal
    receiver, so it takes the signal's arguments). Again after the commit: a request that
    read the old rows between the write and the commit must not keep them."""
    _forget_all()
    transaction.on_commit(_forget_all)


def _forget_all() -> None:
    with _routes_lock:
        _routes.clear()
