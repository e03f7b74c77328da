"""Validation of request bodies and job inputs against a JSON Schema subset: one compiler,
one cache, one error format (docs/errors.md: a 422 ``validation-error`` naming each field).

A version's declared input schema is ``{"type": "object", "properties": {...}, "required":
[...]}`` where each property has ``type`` number | integer | string | boolean | array (with
``items``) | object, and optionally ``minimum``/``maximum``, ``minLength``/``maxLength``,
``minItems``/``maxItems``, ``enum``. An empty schema accepts any JSON object.

:func:`validator_for` compiles a schema once (cached by its JSON) into a :class:`Validator`:
plain Python checks for a well-formed input, and the DRF serializer built from the same schema
for everything else, so every error, and every lenient conversion (numeric strings, trimmed
whitespace), is DRF's own. The unary API's body, the streaming and batch inputs and the jobs
runner all go through it (docs/inference.md, "Runtimes": the input schema).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import lru_cache
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


# --- the fast path ----------------------------------------------------------------------------
# DRF validates a 64-number list item by item, through validator objects. A well-formed input
# does not need that: the fast checks accept exactly the values DRF accepts *unchanged or with
# the same conversion* (a JSON number for a "number" becomes a float, as FloatField does; an
# enum value is looked up by its text, as ChoiceField does) and decline anything else, which
# then goes through the serializer.

_Check = Callable[[Any], tuple[bool, Any]]
_Fast = Callable[[dict[str, Any]], dict[str, Any] | None]
_NO: tuple[bool, Any] = (False, None)
_CHOICE_TYPES = (str, int, float, bool)
_NUMBER_TYPES = frozenset({int, float})
_FLOAT = {float}


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


def _numbers(value: list[Any], low: Any, high: Any) -> tuple[bool, Any]:
    """A list of JSON numbers, checked in C rather than item by item: their types; a sum that
    is finite only if every item is (NaN and infinities decline, and so does a sum that
    overflows: the serializer decides); then the bounds."""
    types = set(map(type, value))
    if not types <= _NUMBER_TYPES:
        return _NO
    if value:
        try:
            if not math.isfinite(sum(value)):
                return _NO
        except OverflowError:
            return _NO
        if not (_in_range(min(value), low, high) and _in_range(max(value), low, high)):
            return _NO
    return True, value.copy() if types == _FLOAT else list(map(float, value))


def _array_check(prop: dict[str, Any]) -> _Check | None:
    items = prop.get("items")
    if not isinstance(items, dict) or not items:
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
            return _numbers(value, lo, hi)
        out = []
        for item in value:
            ok, converted = child(item)
            if not ok:
                return _NO
            out.append(converted)
        return True, out

    return check


def _enum_check(prop: dict[str, Any]) -> _Check | None:
    choices = prop["enum"]
    if not isinstance(choices, list) or not all(type(c) in _CHOICE_TYPES for c in choices):
        return None  # pairs, groups, null: ChoiceField's own reading
    by_text = {str(choice): choice for choice in choices}

    def check(value: Any) -> tuple[bool, Any]:
        if type(value) not in _CHOICE_TYPES or str(value) not in by_text:
            return _NO
        return True, by_text[str(value)]

    return check


def _object_check(value: Any) -> tuple[bool, Any]:
    return (True, dict(value)) if type(value) is dict else _NO


def _check_for(prop: dict[str, Any]) -> _Check | None:
    """A fast check for one property, or None where only DRF will do."""
    if "enum" in prop:
        return _enum_check(prop)
    kind = prop.get("type")
    if kind == "object":
        return _object_check
    if kind in ("number", "integer"):
        return _number_check(prop, integer=kind == "integer")
    if kind == "boolean":
        return lambda value: (True, value) if type(value) is bool else _NO
    if kind == "string":
        return _string_check(prop)
    if kind == "array":
        return _array_check(prop)
    return None


def _compile(schema: dict[str, Any]) -> _Fast | None:
    """The fast checks of an object schema: the validated input, or None (then the serializer
    decides). None where a property has no fast check."""
    required = set(schema.get("required", []))
    properties = schema.get("properties", {})
    checks: dict[str, _Check] = {}
    for name, prop in properties.items():
        check = _check_for(prop) if isinstance(prop, dict) else None
        if check is None:
            return None
        checks[name] = check

    def validate(data: dict[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for name, check in checks.items():
            if name not in data:
                if name in required:
                    return None
                continue
            ok, value = check(data[name])
            if not ok:
                return None
            out[name] = value
        return out

    return validate


# --- validators -------------------------------------------------------------------------------

_NOT_AN_OBJECT = {"non_field_errors": ["Expected a JSON object."]}


class Validator:
    """A compiled schema. ``quick(data)``: the validated data of a well-formed input, else
    None; ``validate(data)``: the validated data, or the ValidationError (keyed by field, for
    the 422) of the serializer built from the schema — or of ``serializer``, for a body whose
    own serializer words its errors (the unary request)."""

    def __init__(
        self, schema: dict[str, Any], serializer: type[serializers.Serializer] | None = None
    ) -> None:
        self.schema = schema
        self._input = serializer is None  # an input: a JSON object, words of this module
        self._serializer = serializer
        self._error: SchemaError | None = None
        if self._input and schema:
            try:
                self._serializer = serializer_for(schema)
            except SchemaError as exc:
                self._error = exc  # an operator's mistake, raised when used
        self._fast = _compile(schema) if schema and self._error is None else None

    def quick(self, data: Any) -> dict[str, Any] | None:
        if self._fast is None or type(data) is not dict:
            return None
        return self._fast(data)

    def validate(self, data: Any) -> dict[str, Any]:
        if self._fast is not None and type(data) is dict:
            done = self._fast(data)
            if done is not None:
                return done
        if self._input and not isinstance(data, dict):
            raise serializers.ValidationError(_NOT_AN_OBJECT)
        if self._error is not None:
            raise self._error
        if self._serializer is None:  # an empty input schema: any object
            return data
        serializer = self._serializer(data=data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)


@lru_cache(maxsize=1024)
def _compiled(key: str) -> Validator:
    return Validator(json.loads(key))


def validator_for(schema: dict[str, Any]) -> Validator:
    """The compiled validator of an input schema (compiled once per schema in a process)."""
    return _compiled(json.dumps(schema, sort_keys=True))


def validate_input(schema: dict[str, Any], data: Any) -> dict[str, Any]:
    """The validated input; raises ValidationError keyed by field name (for a 422)."""
    return validator_for(schema).validate(data)
