"""Media streams, both halves.

Web: pick the model version (router: weights, health, availability), create the output stream
in the log, hand the input to the worker (a file in the default storage, or for a WebSocket
session a second, input stream the consumer appends audio frames to), queue ``media_stream``.

Worker: the version's runtime ``stream(item)`` → one stream event per chunk, the cancel flag
checked between chunks, an ``error`` event for a bad input or a failed engine, always ``end``
(with the processing time and real-time factor), and the input removed afterwards.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from rest_framework import exceptions

from inference.catalog import selectors
from inference.catalog.router import NoRoute, route
from inference.engines import MediaInputError
from inference.rules.breaker import CircuitBreaker
from inference.runtimes import RuntimeUnavailable
from inference.transport import admission
from inference.transport.unary_flow import ModelUnavailable, QueueFull
from inference.worker.predict import model_cache
from plumbing.exceptions import ServiceUnavailable
from plumbing.metrics import MEDIA_FIRST_EVENT, MEDIA_REALTIME_FACTOR
from plumbing.presence import require as require_worker
from plumbing.taskref import task_named
from streaming.eventlog import END, GAP, StreamNotFound, get_log
from tenants.models import Tenant

log = logging.getLogger(__name__)

# The stream kinds of this module and the built-in model that serves each by default.
DEFAULT_MODELS = {
    "transcription": "transcribe-en",
    "audio": "speak-en",
    "video": "faces",
    "translation": "translate-en-es",
}
INPUT_PREFIX = "media-inputs"
INPUT_KIND = "transcription-input"


@dataclass(frozen=True)
class Started:
    stream_id: str
    model: str
    version: str
    input_stream: str | None = None


def _input_name(stream_id: str, suffix: str) -> str:
    return f"{INPUT_PREFIX}/{stream_id}{suffix}"


def media_start(
    *,
    kind: str,
    tenant: Tenant,
    item: dict[str, Any],
    model_name: str | None = None,
    upload: bytes | None = None,
    suffix: str = "",
    session: bool = False,
) -> Started:
    """Route, create the stream, store the input, queue the producer. Raises Http404 (no such
    model for this tenant), ValidationError (the model does not make this kind of stream),
    ModelUnavailable / QueueFull / ServiceUnavailable (503)."""
    name = model_name or DEFAULT_MODELS[kind]
    model = selectors.model_for_tenant(name, tenant)
    try:
        plan = route(model.name, selectors.candidates(model), breaker=CircuitBreaker())
    except NoRoute as exc:
        raise ModelUnavailable.no_route(exc) from exc
    version = selectors.version_of(model, plan.primary.id)
    if version.runtime_options.get("media") != kind:
        raise exceptions.ValidationError({"model": [f"{name} does not make {kind} streams."]})
    require_worker(version.queue)  # 503 no-worker rather than a stream nothing will write
    stream_id = uuid.uuid4().hex
    stream_log = get_log()
    retry_after = settings.INFERENCE_RETRY_AFTER_SECONDS
    deadline = time.time() + settings.MEDIA_MAX_PROCESSING_SECONDS + 60
    stored: str | None = None
    try:
        admission.admit(version.queue, stream_id, deadline)
    except admission.QueueFull as exc:
        full = QueueFull(f"Queue {exc.queue} is full ({exc.bound} requests in flight).")
        full.wait = retry_after  # type: ignore[attr-defined]
        raise full from exc
    try:
        stream_log.create(stream_id, tenant_id=tenant.pk, kind=kind)
        input_stream = None
        if session:
            input_stream = f"{stream_id}-in"
            stream_log.create(input_stream, tenant_id=tenant.pk, kind=INPUT_KIND)
        if upload is not None:
            stored = default_storage.save(_input_name(stream_id, suffix), ContentFile(upload))
            item = {**item, "input": stored}
        task_named("media_stream").apply_async(  # inference.media.tasks
            args=(version.pk, stream_id, item, input_stream), queue=version.queue
        )
    except (RedisError, KombuError, OSError) as exc:
        admission.release(version.queue, stream_id)
        if stored:
            default_storage.delete(stored)
        log.exception("media stream could not be queued", extra={"queue": version.queue})
        down = ServiceUnavailable("The inference queue is unreachable; retry later.")
        down.wait = retry_after  # type: ignore[attr-defined]
        raise down from exc
    return Started(stream_id, model.name, version.version, input_stream)


# --- worker side ------------------------------------------------------------------------------


class _Cancelled(Exception):
    pass


def _wire(value: Any) -> Any:
    """Event data as JSON: bytes become base64 text."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


@contextmanager
def _local_input(stored: str) -> Iterator[str]:
    """A local path of a stored input (engines like OpenCV open files, not streams)."""
    try:
        yield default_storage.path(stored)
        return
    except NotImplementedError:
        pass  # remote storage: copy to a temporary file
    suffix = os.path.splitext(stored)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with default_storage.open(stored, "rb") as source:
            for block in iter(lambda: source.read(1 << 20), b""):
                tmp.write(block)
        tmp.flush()
        yield tmp.name


def _session_frames(input_stream: str, stream_id: str) -> Iterator[bytes]:
    """Audio frames a WebSocket consumer appends to the input stream, as they arrive; ends at
    the input's ``end``. Silence on the socket past MEDIA_SESSION_IDLE_SECONDS ends it too."""
    stream_log = get_log()
    after: str | None = None
    heard = time.monotonic()
    while True:
        if stream_log.is_cancelled(stream_id):
            raise _Cancelled
        events = stream_log.read(input_stream, after, block_ms=250, count=200)
        for event in events:
            if event.event == GAP:
                raise MediaInputError(
                    "input_overrun", "Audio arrived faster than it was transcribed.", status=503
                )
            after = event.id
            if event.event == END:
                return
            if event.event == "chunk":
                heard = time.monotonic()
                yield base64.b64decode(event.data["pcm"])
        if not events and time.monotonic() - heard > settings.MEDIA_SESSION_IDLE_SECONDS:
            raise MediaInputError(
                "idle",
                f"No audio for {settings.MEDIA_SESSION_IDLE_SECONDS:g} s; the session ended.",
                status=408,
            )


def media_produce(
    *, version_id: int, stream_id: str, item: dict[str, Any], input_stream: str | None = None
) -> None:
    """Run the version's ``stream`` on the item and append its events (worker side)."""
    stream_log = get_log()
    started = time.perf_counter()
    give_up = time.monotonic() + settings.MEDIA_MAX_PROCESSING_SECONDS
    summary: dict[str, Any] = {}
    reason = "done"  # the end event's reason, as streaming inference writes it (docs/streams.md)
    duration: float | None = None
    first_ms: float | None = None
    spec = None
    stored = item.pop("input", None)
    try:
        if stream_log.is_cancelled(stream_id):
            raise _Cancelled  # the client left while the task waited in the queue
        spec = selectors.version_spec(version_id)
        connection.close()  # a long stream must not hold a database connection
        loaded = model_cache().get(spec)
        with _input(stored, item, spec.options.get("media", "")):
            if input_stream is not None:
                item["frames"] = _session_frames(input_stream, stream_id)
            for chunk in loaded.runtime.stream(item):
                if stream_log.is_cancelled(stream_id):
                    raise _Cancelled
                if time.monotonic() > give_up:
                    raise MediaInputError(
                        "too_long",
                        f"Processing passed {settings.MEDIA_MAX_PROCESSING_SECONDS:g} s.",
                        status=504,
                    )
                event = str(chunk.pop("event", "chunk"))
                data = _wire(chunk)
                if event == "summary":
                    summary.update(data)
                    continue
                if event == "result" and "duration" in data:
                    duration = float(data["duration"])
                stream_log.append(stream_id, event, data)
                if first_ms is None:
                    first_ms = round((time.perf_counter() - started) * 1000, 2)
                    MEDIA_FIRST_EVENT.labels(spec.model).observe(first_ms / 1000)
    except _Cancelled:
        reason = "cancelled"
    except MediaInputError as exc:
        reason = "timeout" if exc.status == 504 else "error"
        _error(stream_id, exc.code, exc.message, exc.status)
    except RuntimeUnavailable as exc:
        reason = "error"
        _error(stream_id, "model_unavailable", str(exc), 503)
    except StreamNotFound:
        log.info("media stream %s expired under its producer", stream_id)
        return
    except Exception as exc:
        log.exception("media stream %s failed (version %s)", stream_id, version_id)
        reason = "error"
        _error(stream_id, "engine_failed", f"{type(exc).__name__}: {exc}"[:500], 502)
    finally:
        if stored:
            _delete(stored)
        if spec is not None:
            admission.release(spec.queue, stream_id)
        if input_stream is not None:
            _close_quietly(input_stream)
    elapsed = time.perf_counter() - started
    duration = duration if duration is not None else summary.get("duration")
    end: dict[str, Any] = {"reason": reason, **summary, "processing_ms": round(elapsed * 1000, 2)}
    if first_ms is not None:
        end["first_event_ms"] = first_ms
    if duration:
        end["duration"] = duration
        end["rtf"] = round(elapsed / duration, 4)
        if spec is not None and reason == "done":
            MEDIA_REALTIME_FACTOR.labels(spec.model).observe(elapsed / duration)
    try:
        stream_log.close(stream_id, end)
    except StreamNotFound:
        log.info("media stream %s expired before its end", stream_id)


@contextmanager
def _input(stored: str | None, item: dict[str, Any], media: str) -> Iterator[None]:
    if stored is None:
        yield
    elif media == "video":
        with _local_input(stored) as path:
            item["path"] = path
            yield
    else:
        with default_storage.open(stored, "rb") as fh:
            item["audio"] = fh.read()
        yield


def _error(stream_id: str, code: str, message: str, status: int) -> None:
    with suppress(StreamNotFound):
        get_log().append(stream_id, "error", {"code": code, "message": message, "status": status})


def _delete(stored: str) -> None:
    try:
        default_storage.delete(stored)
    except OSError:
        log.exception("could not delete the media input %s", stored)


def _close_quietly(stream: str) -> None:
    stream_log = get_log()
    try:
        meta = stream_log.meta(stream)
        if meta is not None and not meta.closed:
            stream_log.close(stream)
    except (StreamNotFound, RedisError):
        pass
