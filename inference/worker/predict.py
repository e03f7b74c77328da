"""The worker's half of a unary batch: the process's model cache, each version's spec (cached:
immutable per id and checksum), preloading, and running a batch through the version's
batcher into one reply per request. Publishing the replies is the transport's
(:func:`inference.transport.replies.predict_batch`)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from cachetools import TTLCache
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection
from redis.exceptions import RedisError

from inference.catalog import selectors
from inference.runtimes import VersionSpec
from inference.worker import loading
from inference.worker.cache import ModelCache
from inference.worker.outcomes import answer, checked, failure_reply

log = logging.getLogger(__name__)


def _read_artifact(spec: VersionSpec) -> bytes | None:
    if not spec.artifact_name:
        return None
    with default_storage.open(spec.artifact_name, "rb") as fh:
        data: bytes = fh.read()
    return data


@contextlib.contextmanager
def _marked_loading(spec: VersionSpec) -> Iterator[None]:
    """Web processes see the version loading while it does (:mod:`inference.worker.loading`);
    a mark that cannot be written costs the requests their allowance, never the load."""
    token = None
    try:
        token = loading.begin(spec.id)
    except (RedisError, OSError):
        log.warning("marking %s as loading failed", spec.label, exc_info=True)
    try:
        yield
    finally:
        if token is not None:
            try:
                loading.end(spec.id, token)
            except (RedisError, OSError):
                log.warning("unmarking %s as loading failed", spec.label, exc_info=True)


_models = ModelCache(
    max_models=settings.INFERENCE_CACHE_MAX_MODELS,
    read_artifact=_read_artifact,
    while_loading=_marked_loading,
)
# Specs are immutable per id + checksum; re-reading them per task would cost a query each.
_specs: TTLCache[int, VersionSpec] = TTLCache(maxsize=1024, ttl=30)
_specs_lock = threading.Lock()


def model_cache() -> ModelCache:
    return _models


def version_spec(version_id: int) -> VersionSpec:
    with _specs_lock:
        spec = _specs.get(version_id)
    if spec is None:
        spec = selectors.version_spec(version_id)
        with _specs_lock:
            _specs[version_id] = spec
    return spec


def preload(queues: set[str]) -> list[str]:
    """Load and warm the active versions this worker serves, before the first request asks.
    Best effort: a version that cannot load is logged and left for its first request."""
    done: list[str] = []
    try:
        for version_id in selectors.active_version_ids(queues)[: _models.max_models]:
            try:
                spec = version_spec(version_id)
                _models.get(spec)
                done.append(spec.label)
            except Exception:
                log.exception("preloading version %s failed", version_id)
    finally:
        connection.close()  # this runs on a thread of its own
    return done


def load_grace(version_id: int, *, since: float | None = None, loaded: Any = None) -> float:
    """The extra seconds a request's deadline gets here because of its model's load (their
    web processes wait ``INFERENCE_LOAD_ALLOWANCE_SECONDS`` longer while it is marked as
    loading): on arrival, while this process loads the version (it was queued behind the
    load); after :meth:`ModelCache.get`, when the load ended after ``since`` (the request
    waited for it). Otherwise none: late work is dropped."""
    allowance = float(settings.INFERENCE_LOAD_ALLOWANCE_SECONDS)
    if loaded is not None:
        return allowance if since is not None and loaded.loaded_at >= since else 0.0
    return allowance if _models.loading(version_id) else 0.0


def run_batch(
    *, version_id: int, items: list[tuple[str, dict[str, Any], float]]
) -> dict[str, dict[str, Any]]:
    """Each live item's reply (request id -> reply) after one pass through the version's
    batcher. Expired items are dropped, not run (no reply) — but for the load allowance of
    items that wait for their model's load (:func:`load_grace`)."""
    started = time.perf_counter()
    now = time.time()
    grace = load_grace(version_id)  # queued behind this process's load of the version
    live = [item for item in items if item[2] + grace > now]
    if len(live) < len(items):
        log.info("dropped %d expired request(s) for version %s", len(items) - len(live), version_id)
    replies: dict[str, dict[str, Any]] = {}
    if live:
        try:
            asked = time.monotonic()
            loaded = _models.get(version_spec(version_id))
            grace = max(grace, load_grace(version_id, since=asked, loaded=loaded))
            live = checked(loaded, live, replies)
            results = (
                loaded.batcher.submit_many(
                    [payload for _, payload, _ in live], deadlines=[d + grace for _, _, d in live]
                )
                if live
                else []
            )
        except Exception as exc:  # noqa: BLE001 - failure_reply logs it and answers the clients
            failed = failure_reply(version_id, exc, request_ids=[rid for rid, _, _ in live])
            replies.update({rid: dict(failed) for rid, _, _ in live})
        else:
            answer(version_id, live, results, replies)
    ms = round((time.perf_counter() - started) * 1000, 2)
    for reply in replies.values():
        reply["ms"] = ms
    return replies
