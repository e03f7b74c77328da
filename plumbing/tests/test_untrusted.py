"""The one JSON parser policy (plumbing/untrusted.py) and validated pagination
(plumbing/pagination.py), on their own and behind REST framework's parser."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.http import QueryDict
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from plumbing import untrusted
from plumbing.pagination import IntegerCursorPagination, LimitOffsetPagination


def refused(document: str | bytes) -> dict[str, str]:
    with pytest.raises(untrusted.Refused) as caught:
        untrusted.loads(document)
    return {path: detail.code for path, detail in caught.value.errors.items()}


def test_it_parses_what_it_takes_unchanged() -> None:
    document = {
        "text": "Ça va 😀",
        "n": [0, -1, 2**63 - 1, -(2**63), 1.5e300, 1e-400],
        "deep": [[[[{"a": None}]]]],
    }
    raw = json.dumps(document).encode()  # ASCII with \u escapes: the walk runs
    assert untrusted.loads(raw) == json.loads(raw)
    assert untrusted.loads(json.dumps(document, ensure_ascii=False)) == json.loads(raw)


def test_it_refuses_nul_and_lone_surrogates_in_values_and_keys_by_path() -> None:
    assert refused(r'{"input": {"text": "a\u0000b"}}') == {
        "input.text": "null_characters_not_allowed"
    }
    assert refused(r'{"inputs": [{"x": 1}, {"t": "\ud800"}]}') == {
        "inputs[1].t": "surrogate_characters_not_allowed"
    }
    # A key is named escaped: the answer naming it must be storable text too.
    assert refused(r'{"a\u0000": 1}') == {"a\\u0000": "null_characters_not_allowed"}
    # A surrogate pair is one character, not a lone surrogate.
    assert untrusted.loads(r'"\ud83d\ude00"') == "😀"
    # Text that holds a lone surrogate itself (decoded leniently somewhere) is refused too.
    assert refused('["\ud800"]') == {"[0]": "surrogate_characters_not_allowed"}


def test_it_refuses_integers_past_64_bits_and_numbers_that_overflow() -> None:
    assert refused('{"n": 9223372036854775808}') == {"n": "integer_out_of_range"}
    assert refused("[-9223372036854775809, 1e999, -1E+400]") == {
        "[0]": "integer_out_of_range",
        "[1]": "number_not_finite",
        "[2]": "number_not_finite",
    }
    assert refused("1" + "0" * 400) == {"": "integer_out_of_range"}


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "[NaN]"])
def test_it_does_not_parse_the_non_json_constants(token: str) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        untrusted.loads(token)


def test_nesting_past_the_limit_does_not_parse_however_deep(settings: Any) -> None:
    settings.API_JSON_MAX_DEPTH = 4
    assert untrusted.loads("[[[[1]]]]") == [[[[1]]]]
    for document in ("[[[[[1]]]]]", '{"a": {"b": [[{"c": 1}]]}}', "[" * 50_000):
        with pytest.raises(untrusted.TooDeep):
            untrusted.loads(document)
    # Brackets inside strings are text, not nesting: neither way round fools the count.
    assert untrusted.loads('["[[[[[[", "]]]]]]", [[1]]]') == ["[[[[[[", "]]]]]]", [[1]]]
    with pytest.raises(untrusted.TooDeep):
        untrusted.loads('["]]]]]]]", [[[[[1]]]]]]')
    # Many shallow containers are not deep.
    assert len(untrusted.loads(json.dumps([{"a": [1]}] * 1000))) == 1000


def test_the_default_limit_stops_50000_brackets_before_recursion() -> None:
    with pytest.raises(untrusted.TooDeep):
        untrusted.loads(b'{"input": ' + b"[" * 50_000 + b"}")


def test_it_names_at_most_max_refusals_values() -> None:
    document = json.dumps(["\x00"] * 1000)
    assert len(refused(document)) == untrusted.MAX_REFUSALS


def test_bytes_must_be_utf8() -> None:
    with pytest.raises(UnicodeDecodeError):
        untrusted.loads(b'"\xed\xa0\x80"')  # a surrogate encoded as UTF-8 bytes: not UTF-8


def test_the_rest_framework_parser_answers_400_or_422(api: Any) -> None:
    deep = api.post("/v1/auth/token", b"[" * 50_000, content_type="application/json")
    assert deep.status_code == 400
    assert deep.json()["type"] == "urn:sluice:problem:malformed-request"
    assert "API_JSON_MAX_DEPTH" in deep.json()["detail"]
    body = r'{"name": "k", "scopes": ["in\u0000fer"]}'
    nul = api.post("/v1/keys", body, content_type="application/json")
    assert nul.status_code == 422
    assert nul.json()["errors"] == [
        {
            "field": "scopes[0]",
            "detail": "Null characters are not allowed.",
            "code": "null_characters_not_allowed",
        }
    ]
    bad = api.post("/v1/keys", b'{"name": NaN}', content_type="application/json")
    assert bad.status_code == 400


# --- query parameters ---------------------------------------------------------------------------


def query(string: str) -> QueryDict:
    return QueryDict(string)


def test_query_int_takes_whole_numbers_in_range_and_clamps_when_asked() -> None:
    assert untrusted.query_int(query("n=7"), "n") == 7
    assert untrusted.query_int(query("n="), "n") is None
    assert untrusted.query_int(query(""), "n") is None
    assert untrusted.query_int(query("n=99999999999999999999"), "n", maximum=10, clamp=True) == 10
    assert untrusted.query_int(query("n=" + "9" * 5000), "n", maximum=10, clamp=True) == 10
    for bad in ("n=abc", "n=1.5", "n=-1", "n=99999999999999999999", "n=%00", "n=%EF%BC%95"):
        with pytest.raises(exceptions.ValidationError) as caught:
            untrusted.query_int(query(bad), "n")
        assert list(caught.value.detail) == ["n"]  # type: ignore[arg-type]


def paginated(view_query: str) -> tuple[int | None, int]:
    request = Request(APIRequestFactory().get(f"/v1/jobs?{view_query}"))
    paginator = LimitOffsetPagination()
    return paginator.get_limit(request), paginator.get_offset(request)


def test_limit_is_clamped_and_offset_bounded() -> None:
    assert paginated("") == (50, 0)
    assert paginated("limit=99999999999999999999&offset=5") == (1000, 5)
    for bad in ("limit=0", "limit=abc", "offset=-1", "offset=99999999999999999999"):
        with pytest.raises(exceptions.ValidationError):
            paginated(bad)


def test_a_cursor_it_did_not_hand_out_is_refused() -> None:
    paginator = IntegerCursorPagination()
    paginator.ordering = "index"
    for cursor in (
        "garbage",
        base64.b64encode(b"p=99999999999999999999").decode(),
        base64.b64encode(b"p=abc").decode(),
    ):
        request = Request(APIRequestFactory().get("/", {"cursor": cursor}))
        with pytest.raises(exceptions.ValidationError):
            paginator.decode_cursor(request)
    request = Request(APIRequestFactory().get("/", {"cursor": base64.b64encode(b"p=7").decode()}))
    assert paginator.decode_cursor(request).position == "7"
