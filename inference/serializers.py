"""API shapes: OpenAI's model object (id, object, created, owned_by) plus Sluice's fields."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from inference import selectors
from inference.models import Model, ModelVersion


class VersionSerializer(serializers.ModelSerializer):
    shadow = serializers.BooleanField(source="is_shadow")
    stable = serializers.SerializerMethodField()
    available = serializers.SerializerMethodField()
    unavailable_reason = serializers.SerializerMethodField()

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
            "max_batch_size",
            "max_delay_ms",
            "checksum",
            "input_schema",
            "created_at",
        )
        read_only_fields = fields

    def get_stable(self, obj: ModelVersion) -> bool:
        return obj.pk == obj.model.stable_version_id

    def get_available(self, obj: ModelVersion) -> bool:
        return selectors.version_unavailable(obj) is None

    def get_unavailable_reason(self, obj: ModelVersion) -> str | None:
        return selectors.version_unavailable(obj)


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
        return any(
            v.state == ModelVersion.State.ACTIVE
            and v.traffic_weight > 0
            and selectors.version_unavailable(v) is None
            for v in obj.versions.all()
        )


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
