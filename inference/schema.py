"""A version's declared input schema (a small JSON Schema subset) as a DRF serializer.

Supported: ``{"type": "object", "properties": {...}, "required": [...]}`` where each property
has ``type`` number | integer | string | boolean | array (with ``items``), and optionally
``minimum``/``maximum``, ``minLength``/``maxLength``, ``minItems``/``maxItems``, ``enum``.
An empty schema accepts any JSON object.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

_SCALARS: dict[str, type[serializers.Field]] = {
    "number": serializers.FloatField,
    "integer": serializers.IntegerField,
    "string": serializers.CharField,
    "boolean": serializers.BooleanField,
}


class SchemaError(ValueError):
    """The declared schema itself is malformed (an operator's mistake, not the client's)."""


def _field(prop: dict[str, Any], *, required: bool) -> serializers.Field:
    kind = prop.get("type")
    if "enum" in prop:
        return serializers.ChoiceField(choices=list(prop["enum"]), required=required)
    if kind == "array":
        items = prop.get("items") or {}
        child = _field(items if isinstance(items, dict) else {}, required=True) if items else None
        return serializers.ListField(
            child=child or serializers.JSONField(),
            required=required,
            min_length=prop.get("minItems"),
            max_length=prop.get("maxItems"),
        )
    if kind == "object":
        return serializers.DictField(required=required)
    if kind not in _SCALARS:
        raise SchemaError(f"unsupported type {kind!r}")
    kwargs: dict[str, Any] = {"required": required}
    if kind in ("number", "integer"):
        kwargs.update(min_value=prop.get("minimum"), max_value=prop.get("maximum"))
    if kind == "string":
        kwargs.update(
            min_length=prop.get("minLength"), max_length=prop.get("maxLength"), allow_blank=True
        )
    return _SCALARS[kind](**kwargs)


def validate_schema(schema: dict[str, Any]) -> None:
    """Raise SchemaError if the schema uses something this module cannot check."""
    if schema:
        serializer_for(schema)


def serializer_for(schema: dict[str, Any]) -> type[serializers.Serializer]:
    if not schema:
        return serializers.Serializer
    if schema.get("type", "object") != "object" or not isinstance(
        schema.get("properties", {}), dict
    ):
        raise SchemaError("the input schema must be an object with properties")
    required = set(schema.get("required", []))
    fields = {
        name: _field(prop, required=name in required)
        for name, prop in schema.get("properties", {}).items()
    }
    return type("InputSerializer", (serializers.Serializer,), fields)


def validate_input(schema: dict[str, Any], data: Any) -> dict[str, Any]:
    """The validated input; raises ValidationError keyed by field name (for a 422)."""
    if not isinstance(data, dict):
        raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
    if not schema:
        return data
    serializer = serializer_for(schema)(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
