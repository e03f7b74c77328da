"""The one place engines are faked for unit tests: small Python-runtime handlers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar


class Doubler:
    """``{"x": n}`` → ``{"y": 2n}``; records every batch it ran (shared by the class)."""

    batches: ClassVar[list[list[Any]]] = []
    warmed: ClassVar[int] = 0
    closed: ClassVar[int] = 0
    _lock = threading.Lock()

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        self.sleep = float(options.get("sleep", 0))

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with Doubler._lock:
            Doubler.batches.append([item["x"] for item in batch])
        if self.sleep:
            time.sleep(self.sleep)
        return [{"y": item["x"] * 2} for item in batch]

    def warmup(self) -> None:
        Doubler.warmed += 1

    def close(self) -> None:
        Doubler.closed += 1

    @classmethod
    def reset(cls) -> None:
        cls.batches, cls.warmed, cls.closed = [], 0, 0


class SlowLoader(Doubler):
    """:class:`Doubler` whose load takes ``options["load_sleep"]`` seconds (a large model's
    weights), longer than a request's deadline in the load-allowance tests."""

    loads: ClassVar[int] = 0

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        super().__init__(options=options, artifact=artifact)
        SlowLoader.loads += 1
        time.sleep(float(options.get("load_sleep", 0)))


class Typist:
    """``{"x": n}`` → ``n`` tokens ``{"text": "t<i> "}``, one every ``sleep`` seconds when
    streamed: a text model that keeps streaming for a while (cancellation tests)."""

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        self.sleep = float(options.get("sleep", 0))

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"text": "".join(f"t{i} " for i in range(item["x"]))} for item in batch]

    def stream(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for i in range(item["x"]):
            if self.sleep:
                time.sleep(self.sleep)
            yield {"text": f"t{i} "}


class Broken:
    """Always fails: for circuit breaker and error paths."""

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        pass

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise RuntimeError("model exploded")


class Picky:
    """``{"x": n}`` → ``{"y": 2n}``, except that the inputs in ``options["poison"]`` (default
    13) make it raise, whatever batch they are in: an input that passes the schema and fails
    in the engine. ``options["slow"]``: inputs whose batch takes ``options["sleep"]`` seconds
    (to hold the worker while other requests gather)."""

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        self.poison = set(options.get("poison", [13]))
        self.slow = set(options.get("slow", []))
        self.sleep = float(options.get("sleep", 0))

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(item["x"] in self.slow for item in batch):
            time.sleep(self.sleep)
        for item in batch:
            if item["x"] in self.poison:
                raise IndexError("index out of range in self")
        return [{"y": item["x"] * 2} for item in batch]


class LetterEmbedder:
    """``{"text"}`` → ``{"embedding": [letters, vowels, 1.0]}``: an embedding model that is
    cheap and whose answers a test can compute, for serving through ``/v1/embeddings``."""

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        pass

    @staticmethod
    def embed(text: str) -> list[float]:
        return [float(sum(c.isalpha() for c in text)), float(sum(c in "aeiou" for c in text)), 1.0]

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"embedding": self.embed(item["text"])} for item in batch]


class Scorer:
    """``{"x": n}`` → ``{"label": n % 3, "score": n / 10 + offset}``, with the label one off
    for every n divisible by ``wrong_every`` (options): a shadow whose agreement and mean
    absolute difference with a plain Scorer a test can compute."""

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        self.offset = float(options.get("offset", 0))
        self.wrong_every = int(options.get("wrong_every", 0))

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in batch:
            n = item["x"]
            wrong = bool(self.wrong_every) and n % self.wrong_every == 0
            out.append({"label": n % 3 + (1 if wrong else 0), "score": n / 10 + self.offset})
        return out


X_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 1000}},
    "required": ["x"],
}
DOUBLER = {"handler": "inference.tests.fakes.Doubler"}
TYPIST = {"handler": "inference.tests.fakes.Typist"}
SCORER = {"handler": "inference.tests.fakes.Scorer"}
BROKEN = {"handler": "inference.tests.fakes.Broken"}
PICKY = {"handler": "inference.tests.fakes.Picky"}
