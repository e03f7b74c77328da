"""API shapes: OpenAI's model object (id, object, created, owned_by) plus Sluice's fields."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from inference.catalog import selectors
from inference.models import Model, ModelVersion


class CircuitSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["closed", "open", "half_open"])
    reason = serializers.CharField(
        allow_null=True, help_text="The outcome that opened it (callers: several tenants')."
    )
    retry_after = serializers.IntegerField(
        allow_null=True, help_text="Seconds until an open circuit lets a probe through."
    )


class HealthSerializer(serializers.Serializer):
    window_seconds = serializers.IntegerField()
    requests = serializers.IntegerField()
    failures = serializers.IntegerField(help_text="The version's own: engine errors, timeouts.")
    input_failures = serializers.IntegerField(help_text="Engine errors on one request's input.")
    error_rate = serializers.FloatField()
    p99_ms = serializers.FloatField(allow_null=True, help_text="Of successful requests.")
    failing_callers = serializers.IntegerField()
    last_error_at = serializers.DateTimeField(allow_null=True)
    last_error_outcome = serializers.CharField(allow_null=True)
    last_error = serializers.CharField(
        allow_null=True, help_text="The engine's own text: staff only (null for tenants)."
    )


class VersionSerializer(serializers.ModelSerializer):
    """A version and, in Sluice's fields, whether it would be served now: its engine, its
    circuit and its recent outcomes (context: ``states`` from
    :func:`inference.catalog.selectors.version_states`, ``staff`` to include error texts)."""

    shadow = serializers.BooleanField(source="is_shadow")
    stable = serializers.SerializerMethodField()
    available = serializers.SerializerMethodField()
    unavailable_reason = serializers.SerializerMethodField()
    circuit = serializers.SerializerMethodField()
    health = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = (
            "version",
            "state",
            "runtime",
            "device",
            "queue",
            "traffic_weight",
            "shadow",
            "stable",
            "available",
            "unavailable_reason",
            "circuit",
            "health",
            "max_batch_size",
            "max_delay_ms",
            "checksum",
            "input_schema",
            "created_at",
        )
        read_only_fields = fields

    def _state(self, obj: ModelVersion) -> selectors.VersionState:
        states = self.context.setdefault("states", {})
        if obj.pk not in states:
            states.update(selectors.version_states([obj]))
        state: selectors.VersionState = states[obj.pk]
        return state

    def get_stable(self, obj: ModelVersion) -> bool:
        return obj.pk == obj.model.stable_version_id

    def get_available(self, obj: ModelVersion) -> bool:
        return self._state(obj).available

    def get_unavailable_reason(self, obj: ModelVersion) -> str | None:
        return self._state(obj).unavailable

    @extend_schema_field(CircuitSerializer)
    def get_circuit(self, obj: ModelVersion) -> dict[str, Any]:
        state = self._state(obj)
        return {
            "state": state.circuit,
            "reason": state.circuit_reason,
            "retry_after": None if state.retry_after is None else math.ceil(state.retry_after),
        }

    @extend_schema_field(HealthSerializer)
    def get_health(self, obj: ModelVersion) -> dict[str, Any]:
        health = self._state(obj).health
        at = health.last_error_at
        return {
            "window_seconds": settings.INFERENCE_HEALTH_WINDOW_SECONDS,
            "requests": health.requests,
            "failures": health.failures,
            "input_failures": health.input_failures,
            "error_rate": round(health.error_rate, 4),
            "p99_ms": health.p99_ms,
            "failing_callers": health.failing_callers,
            "last_error_at": None if at is None else datetime.fromtimestamp(at, UTC).isoformat(),
            "last_error_outcome": health.last_error_outcome,
            # The engine's own words are the operator's, never a tenant's.
            "last_error": health.last_error if self.context.get("staff") else None,
        }


class ModelInfoSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="name")
    object = serializers.SerializerMethodField()
    created = serializers.SerializerMethodField()
    owned_by = serializers.SerializerMethodField()
    stable_version: serializers.SlugRelatedField[ModelVersion] = serializers.SlugRelatedField(
        slug_field="version", read_only=True
    )
    available = serializers.SerializerMethodField()
    versions = VersionSerializer(many=True, read_only=True)

    class Meta:
        model = Model
        fields = (
            "id",
            "object",
            "created",
            "owned_by",
            "task",
            "description",
            "stable_version",
            "sticky_routing",
            "available",
            "versions",
        )
        read_only_fields = fields

    def get_object(self, obj: Model) -> str:
        return "model"

    def get_created(self, obj: Model) -> int:
        return int(obj.created_at.timestamp())

    def get_owned_by(self, obj: Model) -> str:
        return str(getattr(settings, "INFERENCE_OWNED_BY", "sluice"))

    def get_available(self, obj: Model) -> bool:
        """Whether a request for the model would be served now."""
        states = self.context.setdefault("states", {})
        missing = [v for v in obj.versions.all() if v.pk not in states]
        if missing:
            states.update(selectors.version_states(missing))
        return selectors.model_available(obj, states)


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ModelInfoSerializer(many=True)  # type: ignore[assignment]  # the OpenAI field name


class InferRequestSerializer(serializers.Serializer):
    input = serializers.DictField(help_text="Validated against the version's input schema.")
    version = serializers.CharField(required=False, max_length=32, help_text="Pin a version.")
    timeout_ms = serializers.IntegerField(required=False, min_value=1)

    def validate_timeout_ms(self, value: int) -> int:
        cap = settings.INFERENCE_MAX_TIMEOUT_MS
        if value > cap:
            raise serializers.ValidationError(f"At most {cap} ms.")
        return value

    @staticmethod
    def fast(data: Any) -> dict[str, Any] | None:
        """The validated body of a well-formed request without DRF's per-field machinery (the
        unary hot path), or None: then the serializer decides, errors and all. Accepts only
        what the fields above accept unchanged."""
        if type(data) is not dict or type(data.get("input")) is not dict:
            return None
        out: dict[str, Any] = {"input": dict(data["input"])}  # JSON object keys are strings
        if "version" in data:
            version = data["version"]
            if type(version) is not str or not 0 < len(version) <= 32 or version != version.strip():
                return None
            out["version"] = version
        if "timeout_ms" in data:
            timeout = data["timeout_ms"]
            if type(timeout) is not int or not 1 <= timeout <= settings.INFERENCE_MAX_TIMEOUT_MS:
                return None
            out["timeout_ms"] = timeout
        return out


class StreamInferRequestSerializer(serializers.Serializer):
    """``?stream=true``: one ``input`` (tokens of a text model, or one result), or ``inputs``
    (an ``analysis`` stream: one result per item as soon as its batch is done)."""

    input = serializers.DictField(required=False)
    inputs = serializers.ListField(
        child=serializers.DictField(), required=False, min_length=1, max_length=1024
    )
    version = serializers.CharField(required=False, max_length=32)
    timeout_ms = serializers.IntegerField(required=False, min_value=1)

    def validate_timeout_ms(self, value: int) -> int:
        return InferRequestSerializer().validate_timeout_ms(value)

    def validate(self, attrs: dict) -> dict:
        if ("input" in attrs) == ("inputs" in attrs):
            raise serializers.ValidationError(
                {"input": ["Send either input (one item) or inputs (a list), not both."]}
            )
        return attrs


class InferResponseSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="inference")
    model = serializers.CharField()
    version = serializers.CharField()
    output = serializers.DictField()
    batch_size = serializers.IntegerField()
    latency_ms = serializers.FloatField()
    failed_over = serializers.BooleanField()
