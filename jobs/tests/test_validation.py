"""The batch validator agrees with the real-time one: same accepted items, same errors."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework import exceptions

from inference.registry.builtin import DIGITS_SCHEMA, TEXT_SCHEMA
from inference.rules.input_schema import validate_input
from jobs.validation import compile_validator

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
    fast = _outcome(compile_validator(schema), item)
    slow = _outcome(lambda i: validate_input(schema, i), item)
    assert fast[0] == slow[0]
    if fast[0] == "error":
        assert fast[1] == slow[1]
    else:
        # Equal values (a whole number the serializer made a float compares equal).
        assert fast[1] == slow[1]
