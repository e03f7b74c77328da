"""The input schema's fast path agrees with the DRF serializer it stands in front of."""

from __future__ import annotations

import math
from typing import Any

import pytest
from rest_framework import serializers

from inference.registry.builtin import DIGITS_SCHEMA, MLP_SCHEMA, TEXT_SCHEMA
from inference.rules.input_schema import (
    fast_validator,
    serializer_for,
    validate_input,
    validate_with,
)

MIXED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 10},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
        "counts": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "x": {"type": "number"},
    },
    "required": ["n"],
}
CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (DIGITS_SCHEMA, {"pixels": [0] * 64}),
    (DIGITS_SCHEMA, {"pixels": [16.0, 3] * 32}),
    (DIGITS_SCHEMA, {"pixels": [17] * 64}),
    (DIGITS_SCHEMA, {"pixels": [-1] + [0] * 63}),
    (DIGITS_SCHEMA, {"pixels": [0] * 63}),
    (DIGITS_SCHEMA, {"pixels": ["3"] * 64}),  # DRF converts numeric strings
    (DIGITS_SCHEMA, {"pixels": [True] * 64}),
    (DIGITS_SCHEMA, {"pixels": [math.nan] * 64}),
    (DIGITS_SCHEMA, {"pixels": "0" * 64}),
    (DIGITS_SCHEMA, {"pixels": [0] * 64, "extra": 1}),
    (DIGITS_SCHEMA, {}),
    (MLP_SCHEMA, {"features": [0.5] * 64}),
    (MLP_SCHEMA, {"features": [1e30, -1e30] * 32}),
    (TEXT_SCHEMA, {"text": "hello"}),
    (TEXT_SCHEMA, {"text": "  padded  "}),  # DRF trims
    (TEXT_SCHEMA, {"text": ""}),
    (TEXT_SCHEMA, {"text": 5}),
    (MIXED, {"n": 3}),
    (MIXED, {"n": 3, "flag": True, "tags": ["a", "bc"], "counts": [1, 2], "x": 2}),
    (MIXED, {"n": 3.0}),
    (MIXED, {"n": 11}),
    (MIXED, {"n": 3, "flag": "true"}),
    (MIXED, {"n": 3, "tags": ["abcd"]}),
    (MIXED, {"n": 3, "tags": ["a", "b", "c"]}),
    (MIXED, {"n": 3, "counts": [-1]}),
    (MIXED, {"flag": False}),
]


def _drf(schema: dict[str, Any], data: dict[str, Any]) -> dict[str, Any] | str:
    try:
        return validate_input(schema, data)
    except serializers.ValidationError as exc:
        return f"invalid: {exc.detail}"


@pytest.mark.parametrize(("schema", "data"), CASES)
def test_its_fast_path_accepts_only_what_drf_accepts_and_the_same_way(schema, data) -> None:
    fast = fast_validator(schema)(data)
    expected = _drf(schema, data)
    if fast is not None:
        assert fast == expected
        assert [type(v) for v in fast.get("pixels", [])] == [float] * len(fast.get("pixels", []))
    # whatever the fast path declines, the serializer answers exactly as before
    assert _drf_with(schema, data) == expected


def _drf_with(schema: dict[str, Any], data: dict[str, Any]) -> dict[str, Any] | str:
    try:
        return validate_with(serializer_for(schema), data, fast_validator(schema))
    except serializers.ValidationError as exc:
        return f"invalid: {exc.detail}"


def test_its_fast_path_takes_the_common_inputs() -> None:
    assert fast_validator(DIGITS_SCHEMA)({"pixels": [1] * 64}) == {"pixels": [1.0] * 64}
    assert fast_validator(MIXED)({"n": 1, "tags": ["a"]}) == {"n": 1, "tags": ["a"]}
    enum = {"type": "object", "properties": {"k": {"enum": ["a", "b"]}}}
    assert fast_validator(enum)({"k": "a"}) is None  # choices: always the serializer
