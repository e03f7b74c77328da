"""Reads of the registry: what a tenant may see, what routes, what a worker loads."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet
from django.http import Http404

from inference.models import Model, ModelEvent, ModelVersion
from inference.router import Candidate
from inference.runtimes import VersionSpec
from inference.runtimes import unavailable_reason as _runtime_reason
from tenants.models import Tenant


def version_unavailable(version: ModelVersion) -> str | None:
    """Why this version cannot serve in this process ("unavailable: … — install with …")."""
    return _runtime_reason(version.runtime, version.runtime_options)


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


def model_events(model: Model, *, limit: int = 50) -> list[ModelEvent]:
    return list(model.events.select_related("version")[:limit])
