"""Media engines behind the ``python`` runtime (one module each): speech recognition
(pocketsphinx), speech synthesis (piper), face detection in video (OpenCV's Haar cascades) and
translation (Apertium). Each imports its engine inside the handler, so a process without it
shows the model "unavailable" with the install hint instead of failing.

A handler's ``stream(item)`` yields dicts; ``"event"`` (default ``chunk``) is the stream event
type and the rest is its data (``bytes`` values are sent base64-encoded). A bad input raises
:class:`MediaInputError`, which becomes a 422 (or an ``error`` event once streaming started).
"""

from __future__ import annotations


class MediaInputError(ValueError):
    """The input is not what the engine takes (format, size, a truncated file)."""

    def __init__(self, code: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
