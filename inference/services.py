"""Writes to the model registry. Admin, API and management commands call these, nothing lower;
each change is recorded in the model's audit log (ModelEvent)."""

from __future__ import annotations

import hashlib
import io
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction

from inference.models import Model, ModelEvent, ModelVersion
from inference.runtimes import RuntimeUnavailable, runtime_class
from inference.schema import SchemaError, validate_schema


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


def version_activate(*, version: ModelVersion, actor: str) -> None:
    version.activate(actor=actor)


def version_retire(*, version: ModelVersion, actor: str) -> None:
    version.retire(actor=actor)


def version_set_shadow(*, version: ModelVersion, shadow: bool, actor: str) -> None:
    if shadow and version.state != ModelVersion.State.ACTIVE:
        version.activate(actor=actor)
    version.set_shadow(shadow, actor=actor)


def version_promote(*, version: ModelVersion, actor: str) -> None:
    version.model.promote(version, actor=actor)


def model_rollback(*, model: Model, actor: str) -> ModelVersion:
    return model.rollback(actor=actor)


def model_set_weights(*, model: Model, weights: dict[str, int], actor: str) -> None:
    model.set_weights(weights, actor=actor)
