"""The validator's fast path agrees with the DRF serializer it stands in front of."""

from __future__ import annotations

import math
from typing import Any

import pytest
from rest_framework import serializers

from inference.registry.builtin import DIGITS_SCHEMA, MLP_SCHEMA, TEXT_SCHEMA
from inference.rules.input_schema import serializer_for, validator_for

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
CHOICES: dict[str, Any] = {
    "type": "object",
    "properties": {
        "k": {"enum": ["a", "b"]},
        "n": {"enum": [1, 2]},
        "ks": {"type": "array", "items": {"type": "string", "enum": ["x", "y"]}},
        "meta": {"type": "object"},
    },
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
    (MLP_SCHEMA, {"features": [1e308] * 64}),  # finite items whose sum overflows
    (MLP_SCHEMA, {"features": [math.inf, -math.inf] * 32}),
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
    (CHOICES, {"k": "a", "n": 2, "ks": ["x", "y"], "meta": {"a": [1]}}),
    (CHOICES, {"k": "c"}),
    (CHOICES, {"n": "1"}),  # ChoiceField looks a value up by its text: the choice 1
    (CHOICES, {"n": 1.0}),  # "1.0" is not the text of a choice
    (CHOICES, {"n": True}),
    (CHOICES, {"ks": ["x", "z"]}),
    (CHOICES, {"meta": [1]}),
]


def _drf(schema: dict[str, Any], data: dict[str, Any]) -> dict[str, Any] | str:
    serializer = serializer_for(schema)(data=data)
    try:
        serializer.is_valid(raise_exception=True)
    except serializers.ValidationError as exc:
        return f"invalid: {exc.detail}"
    return dict(serializer.validated_data)


@pytest.mark.parametrize(("schema", "data"), CASES)
def test_its_fast_path_accepts_only_what_drf_accepts_and_the_same_way(schema, data) -> None:
    fast = validator_for(schema).quick(data)
    expected = _drf(schema, data)
    if fast is not None:
        assert fast == expected
        assert {k: type(v) for k, v in fast.items()} == {k: type(v) for k, v in expected.items()}
        assert [type(v) for v in fast.get("pixels", [])] == [float] * len(fast.get("pixels", []))
    # whatever the fast path declines, the serializer answers exactly as before
    assert _drf_with(schema, data) == expected


def _drf_with(schema: dict[str, Any], data: dict[str, Any]) -> dict[str, Any] | str:
    try:
        return validator_for(schema).validate(data)
    except serializers.ValidationError as exc:
        return f"invalid: {exc.detail}"


def test_its_fast_path_takes_the_common_inputs() -> None:
    assert validator_for(DIGITS_SCHEMA).quick({"pixels": [1] * 64}) == {"pixels": [1.0] * 64}
    assert validator_for(MIXED).quick({"n": 1, "tags": ["a"]}) == {"n": 1, "tags": ["a"]}
    assert validator_for(CHOICES).quick({"k": "a", "n": 1}) == {"k": "a", "n": 1}
    # what it declines goes to the serializer
    assert validator_for(CHOICES).quick({"n": 1.0}) is None


def test_it_compiles_each_schema_once() -> None:
    assert validator_for(dict(MIXED)) is validator_for(MIXED)


def test_the_unary_body_keeps_its_serializers_words(settings: Any) -> None:
    from inference.api.serializers import infer_request_validator

    settings.INFERENCE_MAX_TIMEOUT_MS = 5000
    body = infer_request_validator()
    assert body.quick({"input": {"x": 1}, "version": "2", "timeout_ms": 5000, "y": 1}) == {
        "input": {"x": 1},
        "version": "2",
        "timeout_ms": 5000,
    }
    assert body.quick({"input": {}, "timeout_ms": 5001}) is None
    with pytest.raises(serializers.ValidationError) as caught:
        body.validate({"input": {}, "timeout_ms": 5001})
    assert caught.value.detail == {"timeout_ms": ["At most 5000 ms."]}
    with pytest.raises(serializers.ValidationError) as caught:
        body.validate({"input": [1], "version": ""})
    assert set(caught.value.detail) == {"input", "version"}
