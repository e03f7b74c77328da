"""A version's declared input schema (a small JSON Schema subset) as a DRF serializer.

Supported: ``{"type": "object", "properties": {...}, "required": [...]}`` where each property
has ``type`` number | integer | string | boolean | array (with ``items``), and optionally
``minimum``/``maximum``, ``minLength``/``maxLength``, ``minItems``/``maxItems``, ``enum``.
An empty schema accepts any JSON object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def validate_with(
    serializer_class: type[serializers.Serializer],
    data: dict[str, Any],
    fast: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """:func:`validate_input` with the serializer built once per version (the routing table
    keeps it), not once per request; ``fast`` (from :func:`fast_validator`) first."""
    if fast is not None:
        done = fast(data)
        if done is not None:
            return done
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


# --- the fast path ----------------------------------------------------------------------------
# DRF validates a 64-number list item by item, through validator objects (about half a
# millisecond per request on the unary hot path). A well-formed input does not need that: the
# fast path accepts exactly the values DRF accepts *unchanged or with the same conversion* (a
# JSON number for a "number" becomes a float, as FloatField does) and answers None for anything
# else, which then goes through the serializer — so every error, and every lenient conversion
# (numeric strings, whitespace trimming, choices), stays DRF's own.

_Check = Callable[[Any], tuple[bool, Any]]
_NO: tuple[bool, Any] = (False, None)


def _in_range(value: Any, low: Any, high: Any) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _number_check(prop: dict[str, Any], *, integer: bool) -> _Check:
    low, high = prop.get("minimum"), prop.get("maximum")

    def check(value: Any) -> tuple[bool, Any]:
        kind = type(value)
        if kind is not int and (integer or kind is not float or not math.isfinite(value)):
            return _NO
        if not _in_range(value, low, high):
            return _NO
        return True, value if integer else float(value)

    return check


def _string_check(prop: dict[str, Any]) -> _Check:
    low, high = prop.get("minLength"), prop.get("maxLength")

    def check(value: Any) -> tuple[bool, Any]:
        if type(value) is not str or value != value.strip():  # DRF trims: let it
            return _NO
        return (True, value) if _in_range(len(value), low, high) else _NO

    return check


def _array_check(prop: dict[str, Any]) -> _Check | None:
    items = prop.get("items")
    if not isinstance(items, dict) or not items or "enum" in items:
        return None
    child = _check_for(items)
    if child is None:
        return None
    low, high = prop.get("minItems"), prop.get("maxItems")
    kind = items.get("type")
    lo, hi = items.get("minimum"), items.get("maximum")

    def check(value: Any) -> tuple[bool, Any]:
        if type(value) is not list or not _in_range(len(value), low, high):
            return _NO
        if kind == "number":  # the common case (pixels, feature vectors): no call per item
            if not all(type(v) is int or (type(v) is float and math.isfinite(v)) for v in value):
                return _NO
            if value and not (_in_range(min(value), lo, hi) and _in_range(max(value), lo, hi)):
                return _NO
            return True, [float(v) for v in value]
        out = []
        for item in value:
            ok, converted = child(item)
            if not ok:
                return _NO
            out.append(converted)
        return True, out

    return check


def _check_for(prop: dict[str, Any]) -> _Check | None:
    """A fast check for one property, or None where only DRF will do."""
    if "enum" in prop:
        return None
    kind = prop.get("type")
    if kind in ("number", "integer"):
        return _number_check(prop, integer=kind == "integer")
    if kind == "boolean":
        return lambda value: (True, value) if type(value) is bool else _NO
    if kind == "string":
        return _string_check(prop)
    if kind == "array":
        return _array_check(prop)
    return None


def fast_validator(schema: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """A function that validates a well-formed input exactly as :func:`validate_input` would,
    or answers None (then the serializer decides). A property it cannot check makes it always
    answer None."""
    required = set(schema.get("required", []))
    checks = {name: _check_for(prop) for name, prop in schema.get("properties", {}).items()}
    if not schema or any(check is None for check in checks.values()):
        return lambda data: None

    def validate(data: dict[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for name, check in checks.items():
            if name not in data:
                if name in required:
                    return None
                continue
            ok, value = check(data[name])  # type: ignore[misc]
            if not ok:
                return None
            out[name] = value
        return out

    return validate
