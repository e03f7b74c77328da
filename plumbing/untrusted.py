"""Untrusted input: the one JSON parser policy, and the strings PostgreSQL cannot store.

Every JSON document a client sends — API bodies (REST framework's parser, the unary front door),
WebSocket frames, media requests, a job's JSONL/JSON/CSV inputs — is read by :func:`loads`,
and values that arrive some other way (form fields, CSV cells, query parameters) are checked
by :func:`refusals` or :func:`text`, so the same limits hold everywhere:

- Nesting deeper than ``API_JSON_MAX_DEPTH`` does not parse (:class:`TooDeep`, answered 400
  ``malformed-request``): Python's decoder and every walker after it recurse once per level,
  so 50,000 ``[`` would otherwise end in a RecursionError — a limit of the parser, as RFC 8259
  section 9 allows, not a wrong field.
- ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON and do not parse either.
- Values the platform cannot keep are refused by path (:class:`Refused`, answered 422
  ``validation-error`` naming each field): strings (and object keys) with a NUL character or
  a lone UTF-16 surrogate, which PostgreSQL can store neither in text nor in ``jsonb``;
  integers outside the signed 64-bit range (a ``bigint``, numpy's ``int64``); numbers that
  overflow a double (``1e999``), which would become infinities no JSON column takes.

Checking costs a few C-speed passes over the bytes (for the ``digits`` model's body, a few per
cent of the parse); the parsed document is walked only when the text holds a ``\\u`` escape, a
run of 19 digits or a three-digit exponent.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import exceptions, parsers
from rest_framework.exceptions import ErrorDetail

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# At most this many refused values are named in one answer (a body can hold millions).
MAX_REFUSALS = 10

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_WHOLE = re.compile(r"-?[0-9]{1,19}")
_INTEGER = re.compile(r"-?[0-9]+")
# The prefilter works on bytes, with C-speed operations only. Numerals: every digit reads "0",
# every exponent "e" and every sign "+", so a 19-digit run (an integer that may be past 64
# bits, a double that may overflow) and a three-digit exponent are plain substrings.
_NUMERALS = bytes.maketrans(b"0123456789Ee-", b"0000000000ee+")
_LONG_RUN, _BIG_EXPONENTS = b"0" * 19, (b"e000", b"e+000")
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")  # one scan removes one level: no pair it uncovers


class TooDeep(ValueError):
    """Nested deeper than ``API_JSON_MAX_DEPTH``."""

    def __init__(self) -> None:
        limit = settings.API_JSON_MAX_DEPTH
        super().__init__(f"JSON nested deeper than {limit} levels (API_JSON_MAX_DEPTH).")


class Refused(ValueError):
    """Well-formed JSON with values the platform does not take, by field path ("" is the
    whole document), as REST framework error details."""

    def __init__(self, errors: dict[str, ErrorDetail]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(f"{path or 'body'}: {detail}" for path, detail in errors.items())
        )

    def validation_error(self) -> exceptions.ValidationError:
        return exceptions.ValidationError({path: [d] for path, d in self.errors.items()})


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def loads(data: str | bytes, *, path: str = "") -> Any:
    """``data`` (UTF-8 when bytes) parsed under the policy above. Raises ``ValueError``: a
    plain one when it is not JSON, :class:`TooDeep`, or :class:`Refused` naming the values
    (their paths start with ``path``)."""
    if isinstance(data, bytes):
        raw: bytes | None = data
        text = data.decode("utf-8")
    else:
        text = data
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raw = None  # a lone surrogate in the text itself: the walk names it
    try:
        value = _decoder.decode(text)
    except RecursionError:
        raise TooDeep() from None
    if raw is None or _suspect(raw):
        found = refusals(value, path)
        if found:
            raise Refused(found)
    elif raw.count(b"[") + raw.count(b"{") > settings.API_JSON_MAX_DEPTH and _too_deep(raw):
        raise TooDeep()
    return value


def _suspect(raw: bytes) -> bool:
    """Whether a value of this (valid) JSON may be refused: a ``\\u`` escape (NUL, a
    surrogate), a 19-digit run or a three-digit exponent."""
    if b"\\u" in raw:
        return True
    shape = raw.translate(_NUMERALS)
    return _LONG_RUN in shape or any(e in shape for e in _BIG_EXPONENTS)


def _too_deep(raw: bytes) -> bool:
    """Whether (valid) JSON nests deeper than the limit, without walking it: its brackets
    outside strings, with innermost pairs removed once per level."""
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(settings.API_JSON_MAX_DEPTH):
        if not brackets:
            return False
        brackets = _INNERMOST.sub(b"", brackets)
    return bool(brackets)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    # A refused key is named escaped: the answer naming it must itself be storable text.
    key = _UNSTORABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", key)
    return f"{path}.{key}" if path else key


def text_refusal(value: str) -> ErrorDetail | None:
    """Why PostgreSQL could not store this string, or None (REST framework's wording)."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return ErrorDetail("Null characters are not allowed.", code="null_characters_not_allowed")
    return ErrorDetail(
        f"Surrogate characters are not allowed: U+{ord(found.group()):X}.",
        code="surrogate_characters_not_allowed",
    )


def _scalar_refusal(value: Any) -> ErrorDetail | None:
    kind = type(value)
    if kind is str:
        return text_refusal(value)
    if kind is int and not INT64_MIN <= value <= INT64_MAX:
        return ErrorDetail(
            "Integers must be within the signed 64-bit range.", code="integer_out_of_range"
        )
    if kind is float and not math.isfinite(value):
        return ErrorDetail("Numbers must be finite.", code="number_not_finite")
    return None


def refusals(value: Any, path: str = "") -> dict[str, ErrorDetail]:
    """The values of a parsed document the policy refuses, by path (at most
    ``MAX_REFUSALS``). Raises :class:`TooDeep`. Iterative: the document may be as deep as the
    decoder allowed."""
    limit = settings.API_JSON_MAX_DEPTH
    found: dict[str, ErrorDetail] = {}
    if type(value) not in (dict, list):
        reason = _scalar_refusal(value)
        return {path: reason} if reason is not None else {}
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack:
        container, at, level = stack.pop()
        if level > limit:
            raise TooDeep()
        items = container.items() if type(container) is dict else enumerate(container)
        for key, item in items:
            if type(key) is str and (reason := text_refusal(key)) is not None:
                found[_join(at, key)] = reason
            if type(item) is dict or type(item) is list:
                stack.append((item, _join(at, key), level + 1))
            elif (reason := _scalar_refusal(item)) is not None:
                found[_join(at, key)] = reason
            if len(found) >= MAX_REFUSALS:
                return found
    return found


def text(value: str, field: str) -> str:
    """``value`` if PostgreSQL can store it, else a 422 naming ``field`` (query parameters,
    names and other single strings that do not pass through a serializer's CharField)."""
    reason = text_refusal(value)
    if reason is not None:
        raise exceptions.ValidationError({field: [reason]})
    return value


def whole(raw: str) -> int | None:
    """``raw`` as a signed 64-bit integer written in decimal digits, or None."""
    value = int(raw) if _WHOLE.fullmatch(raw) else None
    return value if value is not None and INT64_MIN <= value <= INT64_MAX else None


def query_int(
    params: Mapping[str, str],
    name: str,
    *,
    minimum: int = 0,
    maximum: int = INT64_MAX,
    clamp: bool = False,
) -> int | None:
    """The query parameter ``name`` as a whole number from ``minimum`` to ``maximum`` (with
    ``clamp``, a larger one is ``maximum``), None when it is absent or empty; else a 422
    naming it."""
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    if _INTEGER.fullmatch(raw):
        # Past 19 digits it is past every bound here: never int() a string that long.
        if len(raw.lstrip("-0")) <= 19:
            value = int(raw)
        else:
            value = INT64_MIN - 1 if raw.startswith("-") else INT64_MAX + 1
        if clamp and value > maximum:
            return maximum
        if minimum <= value <= maximum:
            return value
    detail = f"Expected a whole number from {minimum} to {maximum}."
    raise exceptions.ValidationError({name: [ErrorDetail(detail, code="invalid")]})


def api_error(exc: ValueError) -> exceptions.APIException:
    """The answer to a document :func:`loads` would not take: 422 naming the refused values,
    else 400 ``malformed-request``."""
    if isinstance(exc, Refused):
        return exc.validation_error()
    if isinstance(exc, TooDeep):
        return exceptions.ParseError(str(exc))
    return exceptions.ParseError(f"JSON parse error - {exc}")


class JSONParser(parsers.JSONParser):
    """REST framework's JSON parser under the policy: 400 for what does not parse (too deep
    included), 422 naming the values PostgreSQL could not store or that are out of range."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return loads(stream.read().decode(encoding))
        except ValueError as exc:  # UnicodeDecodeError too: 400, as REST framework's parser
            raise api_error(exc) from exc
