"""Sentence splitting for the engines that stream sentence by sentence (speech, translation)."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


def sentences(text: str) -> list[str]:
    """Text split after sentence punctuation and at line breaks, blanks dropped."""
    return [part.strip() for part in _SENTENCE_END.split(text) if part and part.strip()]
