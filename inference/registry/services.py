"""Writes to the model registry. Admin, API and management commands call these, nothing lower;
each change is recorded in the model's audit log (ModelEvent).

A change that gives a version traffic it does not have — activating it, raising its weight
from 0, promoting it from 0 — first proves it (:mod:`inference.registry.checks`); a failed check
refuses the change (:class:`~inference.registry.checks.CheckFailed`). ``skip_check`` (the
operator's reason) makes the change without the check, recorded as a ``check-skipped``
event and a log line.
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction

from inference.models import Model, ModelEvent, ModelVersion
from inference.registry import checks
from inference.rules.input_schema import SchemaError, validate_schema
from inference.runtimes import RuntimeUnavailable, runtime_class
from inference.transport import shadows

log = logging.getLogger(__name__)


def model_get_or_create(*, name: str, task: str = Model.Task.OTHER, description: str = "") -> Model:
    model, created = Model.objects.get_or_create(
        name=name, defaults={"task": task, "description": description}
    )
    if created:
        model.full_clean()
    return model


@transaction.atomic
def version_register(
    *,
    model_name: str,
    version: str,
    runtime: str,
    artifact: bytes | None = None,
    artifact_filename: str = "model.onnx",
    runtime_options: dict[str, Any] | None = None,
    input_schema: dict[str, Any] | None = None,
    examples: list[dict[str, Any]] | None = None,
    device: str = ModelVersion.Device.CPU,
    queue: str | None = None,
    max_batch_size: int = 8,
    max_delay_ms: int = 5,
    task: str = Model.Task.OTHER,
    description: str = "",
    actor: str,
) -> ModelVersion:
    """A new draft version (and its model, if new) with the artifact stored through Django's
    storage API and its SHA-256 recorded. The input schema gets the limits the engine can tell
    from the artifact (:meth:`inference.runtimes.Runtime.on_register`)."""
    input_schema = _engine_schema(
        runtime,
        runtime_options or {},
        io.BytesIO(artifact) if artifact is not None else None,
        input_schema or {},
    )
    try:
        validate_schema(input_schema or {})
    except SchemaError as exc:
        raise ValidationError({"input_schema": str(exc)}) from exc
    model = model_get_or_create(name=model_name, task=task, description=description)
    if model.versions.filter(version=version).exists():
        raise ValidationError({"version": f"{model_name} already has version {version}."})
    row = ModelVersion(
        model=model,
        version=version,
        runtime=runtime,
        runtime_options=runtime_options or {},
        input_schema=input_schema or {},
        examples=examples or [],
        device=device,
        queue=queue or ("gpu" if device == ModelVersion.Device.CUDA else "cpu"),
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
    )
    if artifact is not None:
        row.checksum = hashlib.sha256(artifact).hexdigest()
        row.artifact.save(artifact_filename, ContentFile(artifact), save=False)
    row.full_clean()
    row.save()
    ModelEvent.record(model, row, "register", actor, checksum=row.checksum, runtime=runtime)
    return row


def _engine_schema(
    runtime: str, options: dict[str, Any], artifact: IO[bytes] | None, schema: dict[str, Any]
) -> dict[str, Any]:
    try:
        engine = runtime_class(runtime)
    except RuntimeUnavailable:
        return schema  # the version's own validation names the unknown runtime
    return engine.on_register(options, artifact, schema)


def version_schema_derive(*, version: ModelVersion) -> None:
    """The limits the engine can tell from an artifact uploaded outside
    :func:`version_register` (the admin's upload), in the version's input schema."""
    artifact = version.artifact.file if version.artifact else None
    version.input_schema = _engine_schema(
        version.runtime, dict(version.runtime_options or {}), artifact, version.input_schema or {}
    )


def version_checksum_refresh(*, version: ModelVersion) -> None:
    """Recompute the checksum of an artifact uploaded outside :func:`version_register`."""
    if not version.artifact:
        version.checksum = ""
        return
    digest = hashlib.sha256()
    # Not closed here: an upload not yet saved must stay open for the save that follows.
    for chunk in version.artifact.chunks():
        digest.update(chunk)
    version.checksum = digest.hexdigest()


def version_find(*, model_name: str, version: str) -> ModelVersion:
    try:
        return ModelVersion.objects.select_related("model").get(
            model__name=model_name, version=version
        )
    except ModelVersion.DoesNotExist as exc:
        raise ValidationError(f"{model_name} has no version {version}.") from exc


def _prove(
    versions: list[ModelVersion], *, change: str, actor: str, skip_check: str | None
) -> dict[str, Any] | None:
    """Check each version before ``change`` gives it traffic; the audit detail of how they were
    proven. A failed check is recorded (``check-failed``) and raised. With ``skip_check``
    nothing runs: the caller records the skip with the change (:func:`_skipped`)."""
    if not versions:
        return None
    if skip_check is not None:
        if not skip_check.strip():
            raise ValidationError("Skipping the check needs a reason.")
        return {"skipped": skip_check.strip()}
    reports = {}
    for version in versions:
        report = checks.version_check(version)
        if not report.ok:
            ModelEvent.record(
                version.model, version, "check-failed", actor, change=change, **report.detail()
            )
            raise checks.CheckFailed(version, report)
        reports[version.version] = report.detail()
    if len(reports) == 1:
        return next(iter(reports.values()))
    return {"versions": reports}


def _skipped(
    versions: list[ModelVersion], check: dict[str, Any] | None, *, change: str, actor: str
) -> None:
    """Audit a change made without its check: one event per version and a log line."""
    if not check or "skipped" not in check:
        return
    for version in versions:
        ModelEvent.record(
            version.model, version, "check-skipped", actor, change=change, reason=check["skipped"]
        )
        log.warning(
            "pre-activation check of %s skipped by %s for %s: %s",
            version,
            actor,
            change,
            check["skipped"],
        )


def version_activate(
    *, version: ModelVersion, actor: str, skip_check: str | None = None
) -> dict[str, Any] | None:
    """Activate ``version`` once its check passes; how it was proven (None: it was active)."""
    version.refresh_from_db(fields=["state", "traffic_weight"])
    if version.state == ModelVersion.State.ACTIVE:
        version.activate(actor=actor)
        return None
    proven = [version]
    check = _prove(proven, change="activate", actor=actor, skip_check=skip_check)
    with transaction.atomic():
        version.activate(actor=actor, check=check)
        _skipped(proven, check, change="activate", actor=actor)
    return check


def version_retire(*, version: ModelVersion, actor: str) -> None:
    version.retire(actor=actor)


def version_set_shadow(
    *, version: ModelVersion, shadow: bool, actor: str, skip_check: str | None = None
) -> None:
    """Make ``version`` a shadow (activated first, checked) or a plain version again; a new
    shadow's comparison report starts afresh."""
    if shadow and version.state != ModelVersion.State.ACTIVE:
        version_activate(version=version, actor=actor, skip_check=skip_check)
    was_shadow = version.is_shadow
    version.set_shadow(shadow, actor=actor)
    if shadow and not was_shadow:
        shadows.reset(version.pk)


def version_promote(
    *, version: ModelVersion, actor: str, skip_check: str | None = None
) -> dict[str, Any] | None:
    """Make ``version`` stable with all the traffic; checked first when it serves none now."""
    version.refresh_from_db(fields=["state", "traffic_weight"])
    serving = version.state == ModelVersion.State.ACTIVE and version.traffic_weight > 0
    proven = [] if serving else [version]
    check = _prove(proven, change="promote", actor=actor, skip_check=skip_check)
    with transaction.atomic():
        version.model.promote(version, actor=actor, check=check)
        _skipped(proven, check, change="promote", actor=actor)
    return check


def model_rollback(*, model: Model, actor: str) -> ModelVersion:
    """Not checked: it returns traffic to versions that served it (the way out of trouble
    must never wait for a worker)."""
    return model.rollback(actor=actor)


def model_set_weights(
    *, model: Model, weights: dict[str, int], actor: str, skip_check: str | None = None
) -> dict[str, Any] | None:
    """Canary weights; each version that goes from no traffic to some is checked first."""
    current = {v.version: v for v in model.versions.filter(version__in=list(weights))}
    proven = [
        current[label]
        for label, weight in weights.items()
        if weight
        and label in current
        and current[label].state == ModelVersion.State.ACTIVE
        and not current[label].traffic_weight
    ]
    check = _prove(proven, change="weights", actor=actor, skip_check=skip_check)
    with transaction.atomic():
        model.set_weights(weights, actor=actor, check=check)
        _skipped(proven, check, change="weights", actor=actor)
    return check


def model_set_canary_policy(*, model: Model, policy: dict[str, Any], actor: str) -> None:
    """Turn the automatic canary rollback on (``policy``; missing keys take their defaults)
    or off (``{}``)."""
    model.canary_policy = policy
    model.full_clean(validate_unique=False)
    model.save(update_fields=["canary_policy"])
    ModelEvent.record(model, None, "canary-policy", actor, policy=model.canary_policy)
