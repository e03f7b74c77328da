"""Per-process model cache: each version is loaded (and warmed up) once per worker process.

Least recently used versions are closed when more than ``max_models`` are loaded. A version is
keyed by id, checksum, batching settings and runtime options, so a changed version is a new
entry. Threads asking for a version that is being loaded wait for that one load instead of
starting their own.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from inference.runtimes import Runtime, RuntimeUnavailable, VersionSpec, runtime_class
from inference.runtimes.base import Item, blames_input
from inference.worker.batcher import Batcher
from plumbing.metrics import BATCH_SIZE

log = logging.getLogger(__name__)

ArtifactReader = Callable[[VersionSpec], bytes | None]
LoadMark = Callable[[VersionSpec], AbstractContextManager[object]]
Key = tuple[int, str, int, int, str, str]


@dataclass
class Loaded:
    """A loaded version: its runtime and the batcher in front of it."""

    spec: VersionSpec
    runtime: Runtime
    batcher: Batcher[Item, Item]
    load_ms: float
    loaded_at: float = 0.0  # time.monotonic() when the load ended

    @property
    def checks(self) -> bool:
        """Whether the runtime checks inputs itself before they run (``Runtime.check``)."""
        return type(self.runtime).check is not Runtime.check


class ModelCache:
    def __init__(
        self,
        *,
        max_models: int,
        read_artifact: ArtifactReader,
        while_loading: LoadMark | None = None,
    ) -> None:
        self.max_models = max(1, max_models)
        self.read_artifact = read_artifact
        # Held around every load: web processes see the version loading (worker.loading).
        self.while_loading = while_loading
        self._lock = threading.Lock()
        self._entries: OrderedDict[Key, Loaded] = OrderedDict()
        self._loading: dict[Key, threading.Lock] = {}
        self._in_load: dict[int, int] = {}  # version id -> loads under way
        self.loads = 0

    def get(self, spec: VersionSpec) -> Loaded:
        key = (
            spec.id,
            spec.checksum,
            spec.max_batch_size,
            spec.max_delay_ms,
            spec.device,
            spec.options_digest,
        )
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:  # another thread loaded it while we waited
                    self._entries.move_to_end(key)
                    return entry
            entry = self._load(spec)
            with self._lock:
                self._entries[key] = entry
                self._loading.pop(key, None)
                evicted = []
                while len(self._entries) > self.max_models:
                    evicted.append(self._entries.popitem(last=False)[1])
        for old in evicted:
            self._close(old)
        return entry

    def loading(self, version_id: int) -> bool:
        """Whether a version is being loaded here now."""
        with self._lock:
            return self._in_load.get(version_id, 0) > 0

    def _load(self, spec: VersionSpec) -> Loaded:
        started = time.perf_counter()
        mark = self.while_loading(spec) if self.while_loading else contextlib.nullcontext()
        with self._lock:
            self._in_load[spec.id] = self._in_load.get(spec.id, 0) + 1
        try:
            with mark:
                runtime = runtime_class(spec.runtime)(spec)
                try:
                    runtime.load(self.read_artifact(spec))
                except RuntimeUnavailable:
                    # Its engine may be installed next (extras added while running): the
                    # next load looks at the directories afresh, not at a stale listing.
                    importlib.invalidate_caches()
                    raise
                runtime.warmup()
        finally:
            with self._lock:
                left = self._in_load.pop(spec.id, 1) - 1
                if left > 0:
                    self._in_load[spec.id] = left
        self.loads += 1
        load_ms = (time.perf_counter() - started) * 1000
        log.info("loaded %s (%s) in %.0f ms", spec.label, spec.runtime, load_ms)
        sizes = BATCH_SIZE.labels(spec.model)

        def run_batch(items: list[Item]) -> list[Item]:
            sizes.observe(len(items))
            return runtime.predict(items)

        batcher: Batcher[Item, Item] = Batcher(
            run_batch,
            max_batch_size=spec.max_batch_size,
            max_delay_ms=spec.max_delay_ms,
            isolate=blames_input,
        )
        return Loaded(
            spec=spec,
            runtime=runtime,
            batcher=batcher,
            load_ms=load_ms,
            loaded_at=time.monotonic(),
        )

    def _close(self, entry: Loaded) -> None:
        log.info("evicting %s from the model cache", entry.spec.label)
        try:
            entry.runtime.close()
        except Exception:  # a failing close must not fail the request that evicted it
            log.exception("closing %s failed", entry.spec.label)

    def loaded(self) -> list[VersionSpec]:
        with self._lock:
            return [entry.spec for entry in self._entries.values()]

    def clear(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            self._close(entry)
