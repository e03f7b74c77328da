"""The one interface every runtime implements, and what a worker knows about a version.

Nothing here imports an engine or Django: a runtime module imports its engine inside its own
functions, so a missing engine makes a version "unavailable" instead of breaking the web tier.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

INSTALL_HINT = "install with pip install -r requirements-models.txt"

Item = dict[str, Any]


log = logging.getLogger(__name__)


def torch_device(wanted: str, torch: Any, label: str) -> str:
    """The device a torch model of ``label`` runs on: ``cuda`` when asked for and torch sees a
    GPU; else the CPU, with a warning when cuda was asked for (every torch runtime and handler
    falls back alike, as ONNX Runtime does without its CUDA provider)."""
    if wanted == "cuda":
        if torch.cuda.is_available():
            return "cuda"
        log.warning("%s asks for cuda; torch sees no GPU, using the CPU", label)
    return "cpu"


# How long "not installed" is believed before the engine is looked for again: extras installed
# while the platform runs are found without a restart (docs/inference.md, "Runtimes").
ENGINE_RECHECK_SECONDS = 5.0
_found: dict[str, bool | float] = {}  # module -> True, or the monotonic time it was missing
_found_lock = threading.Lock()


def engine_installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it). Asked on every routing
    decision, so answered from memory: "installed" for good, "missing" for
    :data:`ENGINE_RECHECK_SECONDS`, then looked for again with the import system's caches of
    directory listings dropped (``pip install`` while the process runs)."""
    known = _found.get(module)
    if known is True:
        return True
    now = time.monotonic()
    if known is not None and now - float(known) < ENGINE_RECHECK_SECONDS:
        return False
    if known is not None:
        importlib.invalidate_caches()
    try:
        present = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        present = False
    with _found_lock:
        _found[module] = True if present else now
    if present and known is not None:
        log.info("engine %s is installed now", module)
    return present


def missing_engine(modules: tuple[str, ...], hint: str) -> str | None:
    """Why a runtime needing ``modules`` cannot serve here (the first one not installed, and
    ``hint``: how to install it), or None."""
    for module in modules:
        if not engine_installed(module):
            return f"unavailable: {module} is not installed — {hint}"
    return None


def forget_engines() -> None:
    """Look for every engine afresh (tests)."""
    with _found_lock:
        _found.clear()


class RuntimeUnavailable(Exception):
    """The engine (or handler) a version needs cannot be used in this process."""


class InvalidInput(Exception):
    """An input the engine can tell it cannot run before running it (a text model's prompt and
    ``max_tokens`` past its context window): a 422 naming the field, never a model failure.
    ``errors`` maps input fields to messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


class UpstreamError(Exception):
    """A remote upstream (KServe v2, OpenAI-compatible) failed a call. ``status`` is what the
    API answers: 502 by default (the upstream answered, but not with a usable answer)."""

    status = 502
    retryable = False  # whether sending the same call again may succeed
    upstream_status: int | None = None  # the upstream's HTTP status, when it answered one

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the runtime's read timeout: the API answers 504."""

    status = 504


class UpstreamUnavailable(RuntimeUnavailable, UpstreamError):
    """The upstream cannot take calls now (unreachable, overloaded, circuit open, model not
    loaded there): 503 ``model-unavailable``, like a missing engine."""

    status = 503


def blames_input(exc: BaseException) -> bool:
    """Whether an engine's error may come from the input it ran, rather than from the
    version as a whole: not an engine that cannot serve, not an upstream that failed or sent
    an unusable answer (its 4xx other than 404 and 429 do name the input)."""
    if isinstance(exc, RuntimeUnavailable):
        return False
    if isinstance(exc, UpstreamError):
        status = exc.upstream_status
        return status is not None and 400 <= status < 500 and status not in (404, 429)
    return True


@dataclass(frozen=True)
class VersionSpec:
    """Everything needed to load and batch one model version (no ORM object crosses here)."""

    id: int
    model: str
    version: str
    runtime: str
    checksum: str = ""
    artifact_name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    max_batch_size: int = 8
    max_delay_ms: int = 5
    queue: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.model}:{self.version}"

    @functools.cached_property
    def options_digest(self) -> str:
        """Changes when the runtime options do (a remote runtime's URL has no artifact
        checksum to change), so the model cache loads the edited version afresh."""
        text = json.dumps(self.options, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Runtime(ABC):
    """Load once, predict batches, optionally stream, close.

    ``predict`` takes a list of validated input items (dicts) and returns one output dict per
    item, in order. The batcher relies on that one-to-one order to split results back.
    """

    name: ClassVar[str]

    def __init__(self, spec: VersionSpec) -> None:
        self.spec = spec

    @classmethod
    @abstractmethod
    def unavailable(cls, options: dict[str, Any]) -> str | None:
        """Why this runtime cannot serve a version with these options here, or None.
        Cheap: the web tier calls it to show availability, so it must not load the engine."""

    @abstractmethod
    def load(self, artifact: bytes | None) -> None:
        """Load the model (the artifact's bytes, if the version has one)."""

    @classmethod
    def on_register(
        cls, options: dict[str, Any], artifact: IO[bytes] | None, input_schema: dict[str, Any]
    ) -> dict[str, Any]:
        """The input schema a new version gets (``artifact``: its file, open): what can be
        told from the artifact before anything runs (a text model's context window bounds
        ``max_tokens``). Cheap and engine-free: it runs where the version is registered."""
        return input_schema

    def check(self, item: Item) -> Item:
        """The validated ``item`` as the engine will run it, or :class:`InvalidInput`: what
        only the loaded engine can check (a prompt's length in tokens). Runs on the worker
        before the item joins a batch."""
        return item

    @abstractmethod
    def predict(self, batch: list[Item]) -> list[Item]:
        """One output per input item, same order."""

    def stream(self, item: Item) -> Iterator[Item]:
        """Chunks of one item's output; runtimes without streaming yield the whole answer."""
        yield self.predict([item])[0]

    def warmup(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Run once after load so the first real request does not pay for lazy setup."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release what ``load`` took (sessions, GPU memory)."""
