"""Streaming inference (design 3.2): the worker appends events to a stream in the stream log
as it computes; SSE views and WebSocket consumers forward them.

Web half (:func:`stream_start`): route → validate → create the stream (owned by the tenant) →
take a slot on the version's queue → queue ``inference_stream`` on that queue, with the stream
id as the Celery task id (so a queued task can be revoked by stream id).

Worker half (:func:`stream_run`): a stream cancelled before the task starts is dropped; else
the version comes from the worker's model cache and the producer appends

- ``text`` / ``chat``: a ``token`` event per generated piece (``{"text"}``), then ``result``
  (``{"index": 0, "output": {...}}``: the whole answer) and ``end``;
- ``analysis``: a ``result`` event per input item as soon as its batch is computed
  (``{"index", "output"}``), then ``end``.

The cancel flag is checked after every chunk (one ``EXISTS`` on Redis): a cancelled stream
stops the engine (closing the runtime's generator stops generation at the next token) and
ends with ``end`` ``{"reason": "cancelled"}``. Failures end with ``error`` then ``end``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from celery import current_app as app
from django.conf import settings
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from rest_framework import exceptions

from inference.catalog.selectors import RoutingTable
from inference.models import Model
from inference.rules.breaker import CircuitBreaker
from inference.runtimes import RuntimeUnavailable, VersionSpec
from inference.runtimes.base import InvalidInput, Item, UpstreamError
from inference.transport import admission, unary_flow
from inference.worker import predict
from plumbing.exceptions import ServiceUnavailable
from plumbing.presence import require as require_worker
from plumbing.redis_wire import redis_wire
from plumbing.taskref import task_named
from streaming.eventlog import RedisLog, StreamNotFound, get_log
from tenants.models import Tenant

log = logging.getLogger(__name__)

TEXT, CHAT, ANALYSIS = "text", "chat", "analysis"
KINDS = (TEXT, CHAT, ANALYSIS)
MAX_ITEMS = 1024


@dataclass(frozen=True)
class Started:
    stream_id: str
    model: str
    version: str
    kind: str
    deadline: float


def stream_start(
    *,
    model: Model | RoutingTable,
    tenant: Tenant | None,
    kind: str,
    items: list[dict[str, Any]],
    version: str | None = None,
    timeout_ms: int | None = None,
) -> Started:
    """Validate and queue a streaming inference; the events follow in the returned stream.

    ``items``: one input for ``text``/``chat`` (and a single ``analysis`` input), up to
    ``MAX_ITEMS`` for ``analysis``. Raises the same API errors as unary inference (422 naming
    the field, 503 queue full or no version). ``model`` is a Model row or its routing table;
    either way routing reads this process's routing table, as unary inference does (no SQL
    while it is fresh)."""
    if kind not in KINDS:
        raise ValueError(f"unknown stream kind {kind!r}")
    table, plan = unary_flow.pick_route(model, tenant, version, CircuitBreaker())
    chosen = table.versions[plan.primary.id]
    payloads = []
    field = "input" if kind != ANALYSIS or len(items) == 1 else "inputs"
    for index, item in enumerate(items):
        try:
            payloads.append(chosen.validator.validate(item))
        except exceptions.ValidationError as exc:
            key = field if field == "input" else f"inputs[{index}]"
            raise exceptions.ValidationError({key: exc.detail}) from exc
    require_worker(chosen.queue)  # 503 no-worker rather than a stream nothing will write
    deadline = unary_flow.deadline_for(timeout_ms)
    stream_id = f"inf-{uuid.uuid4().hex}"
    retry_after = settings.INFERENCE_RETRY_AFTER_SECONDS
    inference_stream = task_named("inference_stream")  # inference.tasks
    task: dict[str, Any] = {
        "args": (chosen.id, kind, payloads, stream_id, deadline, chosen.queue),
        "queue": chosen.queue,
        "task_id": stream_id,
        # Past the deadline by the load allowance, as the unary batches: one queued behind its
        # model's load still runs (the worker drops it on arrival otherwise).
        "expires": max(1.0, deadline - time.time()) + settings.INFERENCE_LOAD_ALLOWANCE_SECONDS,
        # As the unary batches (inference.transport.dispatch): monitors see a summary, not the
        # inputs.
        "argsrepr": f"(version={chosen.id}, kind={kind}, items={len(payloads)})",
    }
    tenant_id = tenant.pk if tenant else 0
    stream_log = get_log()
    try:
        redis_log = stream_log if isinstance(stream_log, RedisLog) else None
        wire = redis_wire(inference_stream, **task) if redis_log is not None else None
        if redis_log is not None and wire is not None:
            # One round trip: create the stream, take the queue slot (held until the worker
            # is done or the deadline passes) and, if it was taken, queue the task.
            if admission.admit_many(
                chosen.queue,
                {stream_id: deadline},
                send=wire,
                before=lambda pipe: redis_log.create(
                    stream_id, tenant_id=tenant_id, kind=kind, pipe=pipe
                ),
            ):
                raise admission.QueueFull(chosen.queue, admission.queue_bound(chosen.queue))
        else:
            stream_log.create(stream_id, tenant_id=tenant_id, kind=kind)
            admission.admit(chosen.queue, stream_id, deadline)
            try:
                # The queue is not declared again per message: workers declare theirs.
                inference_stream.apply_async(kwargsrepr="{}", declare=[], **task)
            except BaseException:
                admission.release(chosen.queue, stream_id)
                raise
    except admission.QueueFull as exc:
        full = unary_flow.QueueFull(f"Queue {exc.queue} is full ({exc.bound} requests in flight).")
        full.wait = retry_after  # type: ignore[attr-defined]
        raise full from exc
    except (RedisError, KombuError, OSError) as exc:
        log.exception("streaming inference could not be queued", extra={"queue": chosen.queue})
        down = ServiceUnavailable("The inference queue is unreachable; retry later.")
        down.wait = retry_after  # type: ignore[attr-defined]
        raise down from exc
    return Started(
        stream_id=stream_id, model=table.name, version=chosen.version, kind=kind, deadline=deadline
    )


def stream_cancel(stream_id: str) -> None:
    """Ask the producer to stop: the worker sees the flag at its next chunk; a task still in
    the queue is revoked (and would drop itself on start anyway, seeing the flag)."""
    try:
        get_log().request_cancel(stream_id)
    except StreamNotFound:
        return
    try:
        app.control.revoke(stream_id)
    except (KombuError, RedisError, OSError):  # best effort: the flag alone stops it
        log.warning("revoking stream task %s failed", stream_id, exc_info=True)


# --- worker side ------------------------------------------------------------------------------


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def stream_run(
    *,
    version_id: int,
    kind: str,
    items: list[Item],
    stream_id: str,
    deadline: float,
    queue: str,
) -> None:
    """Produce a stream's events (worker side); frees the stream's queue slot when done."""
    stream_log = get_log()
    spec: VersionSpec | None = None
    started = time.perf_counter()
    try:
        if stream_log.is_cancelled(stream_id):
            stream_log.close(stream_id, {"reason": "cancelled", "stopped_at": time.time()})
            return
        if time.time() >= deadline + predict.load_grace(version_id):
            raise _Stop("timeout")
        spec = predict.version_spec(version_id)
        asked = time.monotonic()
        loaded = predict.model_cache().get(spec)
        # A stream that waited for its model's load gets the load allowance on top.
        deadline += predict.load_grace(version_id, since=asked, loaded=loaded)
        if loaded.checks:
            items = [loaded.runtime.check(item) for item in items]

        def check() -> None:
            if stream_log.is_cancelled(stream_id):
                raise _Stop("cancelled")
            if time.time() >= deadline:
                raise _Stop("timeout")

        if kind == ANALYSIS and len(items) > 1:
            count = _analysis(stream_log, stream_id, loaded.runtime, items, spec, check)
        else:
            count = _single(stream_log, stream_id, loaded.runtime, items[0], check)
        stream_log.close(
            stream_id,
            {
                "reason": "done",
                "model": spec.model,
                "version": spec.version,
                "events": count,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
    except StreamNotFound:
        log.info("stream %s expired while producing; stopped", stream_id)
    except _Stop as stop:
        _finish_early(stream_id, stop.reason)
    except InvalidInput as exc:
        _fail(stream_id, "invalid_input", str(exc), errors=exc.errors)
    except RuntimeUnavailable as exc:
        _fail(stream_id, "model_unavailable", str(exc))
    except UpstreamError as exc:
        # The upstream's own text is the operator's (logged), never the client's.
        log.warning("stream %s of version %s: upstream failed: %s", stream_id, version_id, exc)
        said = f" with HTTP {exc.upstream_status}" if exc.upstream_status else ""
        if exc.status == 504:
            _fail(stream_id, "timeout", "The model's upstream did not answer in time.")
        else:
            _fail(stream_id, "inference_failed", f"The model's upstream failed{said}.")
    except Exception:
        log.exception("stream %s of version %s: the model failed", stream_id, version_id)
        _fail(
            stream_id,
            "inference_failed",
            f"The model failed on this input; its error is logged under stream id {stream_id}.",
        )
    finally:
        admission.release(queue, stream_id)


def _finish_early(stream_id: str, reason: str) -> None:
    stream_log = get_log()
    stopped = {"reason": reason, "stopped_at": time.time()}
    try:
        if reason == "timeout":
            stream_log.append(stream_id, "error", {"code": "timeout", "message": "deadline passed"})
        stream_log.close(stream_id, stopped)
    except StreamNotFound:
        pass
    log.info("stream %s stopped: %s", stream_id, reason)


def _fail(
    stream_id: str, code: str, message: str, *, errors: dict[str, list[str]] | None = None
) -> None:
    stream_log = get_log()
    data: dict[str, Any] = {"code": code, "message": message}
    if errors:
        data["errors"] = errors  # input field -> messages, as a 422 names them
    try:
        stream_log.append(stream_id, "error", data)
        stream_log.close(stream_id, {"reason": "error"})
    except StreamNotFound:
        pass


def _is_token(chunk: Item) -> bool:
    return len(chunk) == 1 and isinstance(chunk.get("text"), str)


def _single(stream_log: Any, stream_id: str, runtime: Any, item: Item, check: Any) -> int:
    """One input through ``runtime.stream``: ``{"text"}`` chunks are tokens, sent at once;
    the last chunk is the whole answer (``result``); other chunks in between are ``chunk``."""
    chunks: Iterator[Item] = runtime.stream(item)
    count = 0
    held: Item | None = None  # a non-token chunk waits to learn whether it is the last
    pieces: list[str] = []
    try:
        for chunk in chunks:
            if held is not None:
                stream_log.append(stream_id, "chunk", held)
                count += 1
                held = None
            if _is_token(chunk):
                stream_log.append(stream_id, "token", chunk)
                pieces.append(chunk["text"])
                count += 1
            else:
                held = chunk
            check()
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # stops the engine (generation ends at its next token)
    output = held if held is not None else {}
    if pieces and not output.get("text"):
        # A runtime whose last chunk only says why it stopped (a remote upstream's stream).
        output = {**output, "text": "".join(pieces)}
    stream_log.append(stream_id, "result", {"index": 0, "output": output})
    return count + 1


def _analysis(
    stream_log: Any,
    stream_id: str,
    runtime: Any,
    items: list[Item],
    spec: VersionSpec,
    check: Any,
) -> int:
    """Items in batches of the version's ``max_batch_size``; each item's ``result`` is sent
    as soon as its batch is done, and cancellation is checked between batches."""
    size = max(1, spec.max_batch_size)
    for start in range(0, len(items), size):
        check()
        outputs = runtime.predict(items[start : start + size])
        for offset, output in enumerate(outputs):
            stream_log.append(stream_id, "result", {"index": start + offset, "output": output})
    return len(items)
