"""What the text-generation runtimes (``transformers``, ``onnx-textgen``) share: the input
schema, the context window's rules (docs/inference.md, "Limits that come from the model"),
the OpenAI ``stop`` parameter and incremental detokenisation. Plain Python: no engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inference.runtimes.base import InvalidInput, Item


def text_generation_schema(max_tokens: int) -> dict[str, Any]:
    """The input schema of a text-generation version: the fields the runtimes read, with
    ``max_tokens`` bounded by what the model can generate (its context window less one
    prompt token, or ``max_tokens_limit``)."""
    return {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 0, "maxLength": 20000},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": max_tokens},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "stop": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            "messages": {"type": "array", "items": {"type": "object"}, "maxItems": 256},
        },
        "required": ["prompt"],
    }


def bound_max_tokens(
    input_schema: dict[str, Any], context: int, options: dict[str, Any]
) -> dict[str, Any]:
    """A model's context window bounds ``max_tokens`` at registration: an empty schema becomes
    :func:`text_generation_schema`, a declared ``max_tokens`` gets that maximum at most."""
    most = min(context - 1, int(options.get("max_tokens_limit", 1024)))
    if not input_schema:
        return text_generation_schema(most)
    properties = input_schema.get("properties")
    if not isinstance(properties, dict):
        return input_schema
    declared = properties.get("max_tokens")
    if not isinstance(declared, dict) or declared.get("maximum", most + 1) <= most:
        return input_schema
    bounded = {**declared, "maximum": most}
    return {**input_schema, "properties": {**properties, "max_tokens": bounded}}


def fit_context(
    item: Item, *, tokens: int, context: int, start_token: str | None, default_new_tokens: int
) -> Item:
    """The engine's own check of a prompt of ``tokens`` tokens against the context window it
    shares with the completion: a prompt that fills it, or an explicit ``max_tokens`` that
    does not fit after the prompt, is a 422 naming the field; without ``max_tokens`` the
    default completion is cut to what is left. An empty prompt starts from ``start_token``,
    as GPT-2 generates unconditional text."""
    if tokens == 0:
        if not start_token:
            raise InvalidInput({"prompt": ["The prompt is empty; this model needs a token."]})
        item, tokens = {**item, "prompt": start_token}, 1
    if tokens >= context:
        raise InvalidInput(
            {
                "prompt": [
                    f"The prompt is {tokens} tokens; the model's context window is "
                    f"{context} tokens, and the answer needs at least one of them."
                ]
            }
        )
    asked = item.get("max_tokens")
    if asked is None:
        fits = tokens + default_new_tokens <= context
        return item if fits else {**item, "max_tokens": context - tokens}
    if tokens + int(asked) > context:
        raise InvalidInput(
            {
                "max_tokens": [
                    f"The prompt is {tokens} tokens and max_tokens is {asked}: together "
                    f"they exceed the model's context window of {context} tokens (at most "
                    f"{context - tokens} here)."
                ]
            }
        )
    return item


def cut_at_stop(text: str, stops: Any) -> tuple[str, bool]:
    """``text`` up to the first of the ``stops`` (a string or a list of them) it contains, and
    whether one was found: the OpenAI ``stop`` parameter."""
    if not stops:
        return text, False
    found = [text.find(s) for s in ([stops] if isinstance(stops, str) else stops) if s]
    found = [i for i in found if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class Pieces:
    """Text pieces of a stream of token ids: a piece is sent once its characters are whole
    (the bytes of one character may span tokens) and cut at the first ``stop`` string.
    ``decode(ids)`` is the tokenizer's, special tokens skipped."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Any) -> None:
        self.decode = decode
        self.stops = stops
        self.ids: list[int] = []
        self.text = ""  # what was sent
        self.stopped = False
        self._prefix = self._read = 0

    def add(self, token: int) -> str:
        """The new piece after ``token`` ('' when nothing is whole yet); ``stopped`` once a
        stop string was reached (send the piece, then end)."""
        ids = self.ids
        ids.append(token)
        before = self.decode(ids[self._prefix : self._read])
        after = self.decode(ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        piece = after[len(before) :]
        self._prefix, self._read = self._read, len(ids)
        cut, self.stopped = cut_at_stop(self.text + piece, self.stops)
        piece = cut[len(self.text) :]
        self.text = cut
        return piece
