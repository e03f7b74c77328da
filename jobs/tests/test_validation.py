"""Job inputs go through the real-time validator: the serializer's items and errors."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework import exceptions

from inference.registry.builtin import DIGITS_SCHEMA, TEXT_SCHEMA
from inference.rules.input_schema import serializer_for, validator_for

MIXED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 10},
        "flag": {"type": "boolean"},
        "tag": {"type": "string", "enum": ["a", "b"]},
        "xs": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    },
    "required": ["n"],
}


def _serializer(schema: dict[str, Any], item: Any) -> dict[str, Any]:
    """What the documented 422 says: the schema's DRF serializer, without a fast path."""
    if not isinstance(item, dict):
        raise exceptions.ValidationError({"non_field_errors": ["Expected a JSON object."]})
    if not schema:
        return item
    serializer = serializer_for(schema)(data=item)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _outcome(fn: Any, item: Any) -> Any:
    try:
        return ("ok", fn(item))
    except exceptions.ValidationError as exc:
        return ("error", exc.detail)


@pytest.mark.parametrize(
    ("schema", "item"),
    [
        (DIGITS_SCHEMA, {"pixels": [float(i % 17) for i in range(64)]}),
        (DIGITS_SCHEMA, {"pixels": [1.0] * 64, "extra": 1}),
        (DIGITS_SCHEMA, {"pixels": [1.0] * 63}),
        (DIGITS_SCHEMA, {"pixels": [17.0] + [1.0] * 63}),
        (DIGITS_SCHEMA, {"pixels": ["x"] + [1.0] * 63}),
        (DIGITS_SCHEMA, {}),
        (DIGITS_SCHEMA, [1, 2]),
        (TEXT_SCHEMA, {"text": "fine"}),
        (TEXT_SCHEMA, {"text": "  padded  "}),
        (TEXT_SCHEMA, {"text": ""}),
        (TEXT_SCHEMA, {"text": 5}),
        (MIXED, {"n": 3, "flag": True, "tag": "a", "xs": [1.5]}),
        (MIXED, {"n": "3"}),
        (MIXED, {"n": 3.5}),
        (MIXED, {"n": 11}),
        (MIXED, {"n": True}),
        (MIXED, {"n": 1, "tag": "c"}),
        (MIXED, {"n": 1, "xs": []}),
        (MIXED, {"n": 1, "flag": "yes"}),
        ({}, {"anything": [1, {"goes": True}]}),
    ],
)
def test_it_agrees_with_the_real_time_validator(schema: dict[str, Any], item: Any) -> None:
    fast = _outcome(validator_for(schema).validate, item)
    slow = _outcome(lambda i: _serializer(schema, i), item)
    assert fast == slow
    if fast[0] == "ok":
        assert {k: type(v) for k, v in fast[1].items()} == {k: type(v) for k, v in slow[1].items()}


def test_a_job_input_gets_the_real_time_conversions() -> None:
    # A whole number for a "number" is a float and an enum value is read by its text, as the
    # real-time API does (the batch path once kept ints and compared choices by value).
    validate = validator_for(MIXED).validate
    assert validate({"n": 1, "xs": [2]}) == {"n": 1, "xs": [2.0]}
    assert type(validate({"n": 1, "xs": [2]})["xs"][0]) is float
    choices = {"type": "object", "properties": {"k": {"enum": [1, 2]}}}
    assert validator_for(choices).validate({"k": "1"}) == {"k": 1}
    with pytest.raises(exceptions.ValidationError) as caught:
        validator_for(choices).validate({"k": 1.0})
    assert "is not a valid choice" in str(caught.value.detail["k"][0])
