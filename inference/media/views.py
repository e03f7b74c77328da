"""``/v1/media/…``: start a media stream and watch it (docs/media.md).

Async views on daphne: validate what the web tier can (format, size, text) and answer a
problem+json at once; take a stream slot; queue the producer; wait for its first event, so an
input only the engine can judge (an undecodable or truncated video) still gets a problem+json;
then stream the events as Server-Sent Events (or, for speech with ``Accept: audio/wav``, a
chunked WAV) — a long-lived response (streaming.responses: the slot held until it closes, the
credential re-checked). With ``Prefer: respond-async`` the answer is a 202 naming the stream,
to read through ``/v1/streams/{id}/events`` or ``/ws/v1/streams/{id}``. A client that goes
away before the end cancels the work (the worker checks the cancel flag between chunks).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import Http404, HttpRequest, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions

from inference.engines import MediaInputError
from inference.engines.audio import UNKNOWN_SIZE, read_wav, wav_header
from inference.media import services
from plumbing import untrusted
from plumbing.exceptions import PayloadTooLarge
from plumbing.problems import exception_response, problem_response
from streaming.eventlog import END, Event, StreamNotFound, get_log
from streaming.responses import (
    Hold,
    TooManyStreams,
    event_response,
    hold_release,
    hold_take_async,
    unless_abandoned,
)
from streaming.views import authenticate_sse
from tenants.authentication import presented_credential
from tenants.selectors import KeyContext

log = logging.getLogger(__name__)

WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
VIDEO_SUFFIXES = {
    "video/mp4": ".mp4",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "application/octet-stream": "",
}
# Error codes of the engines → (problem type slug) of the answer.
SLUGS = {
    "unsupported_audio": "unsupported-media-type",
    "unsupported_video": "unsupported-media-type",
    "unsupported_image": "unsupported-media-type",
    "empty_audio": "invalid-media",
    "empty_video": "invalid-media",
    "truncated_video": "invalid-media",
    "bad_audio_frame": "invalid-media",
    "audio_too_long": "payload-too-large",
    "video_too_long": "payload-too-large",
    "text_too_long": "payload-too-large",
    "empty_text": "validation-error",
    "unsupported_sample_rate": "validation-error",
    "model_unavailable": "model-unavailable",
    "engine_failed": "inference-failed",
}


def _problem(request: HttpRequest, exc: Exception) -> HttpResponseBase:
    """Any error of the start-up path as the same problem+json DRF views answer."""
    if isinstance(exc, MediaInputError):
        return _input_problem(request, exc.code, exc.message, exc.status)
    return exception_response(request, exc)


def _input_problem(request: HttpRequest, code: str, message: str, status: int) -> JsonResponse:
    slug = SLUGS.get(code, "invalid-media")
    if slug == "validation-error":
        return problem_response(
            422,
            slug=slug,
            title="Request body failed validation",
            detail=message,
            instance=request.path,
            errors=[{"field": "text" if "text" in code else "", "detail": message, "code": code}],
        )
    return problem_response(status, slug=slug, detail=message, instance=request.path, code=code)


def _with_stream(problem: JsonResponse, stream_id: str) -> JsonResponse:
    """Name the (ended) stream in a problem the worker found, for the curious and for tests."""
    body = json.loads(problem.content)
    body["stream"] = stream_id
    problem.content = json.dumps(body).encode()
    return problem


def _declared_size(request: HttpRequest, limit: int, what: str) -> None:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise PayloadTooLarge(f"The {what} is {length} bytes; the limit is {limit}.")


def _upload(
    request: HttpRequest, limit: int, what: str, types: tuple[str, ...]
) -> tuple[bytes, str]:
    """The uploaded bytes (a raw body of an accepted type, or the ``file`` field of a
    multipart form) and the content type or file name they came with."""
    _declared_size(request, limit, what)
    content_type = request.content_type or ""
    if content_type == "multipart/form-data":
        try:
            upload = request.FILES.get("file")
        except MultiPartParserError as exc:  # no boundary, a truncated part: the body's fault
            raise exceptions.ParseError(f"Malformed multipart body: {exc}") from exc
        if upload is None:
            raise exceptions.ValidationError({"file": ["Upload the media in the 'file' field."]})
        if upload.size is not None and upload.size > limit:
            raise PayloadTooLarge(f"The {what} is {upload.size} bytes; the limit is {limit}.")
        return upload.read(), upload.name or ""
    if content_type not in types:
        raise exceptions.UnsupportedMediaType(
            content_type or "(none)",
            detail=f"Send the {what} as {', '.join(types)} or multipart/form-data "
            f"(field 'file'); got {content_type or 'no Content-Type'}.",
        )
    body = request.body
    if len(body) > limit:
        raise PayloadTooLarge(f"The {what} is {len(body)} bytes; the limit is {limit}.")
    if not body:
        raise MediaInputError(
            f"empty_{what}",
            f"The {what} is empty.",
            status=422,
        )
    return body, content_type


def _json(request: HttpRequest) -> dict[str, Any]:
    if (request.content_type or "") != "application/json":
        raise exceptions.UnsupportedMediaType(
            request.content_type or "(none)", detail="Send a JSON object (application/json)."
        )
    try:
        body = untrusted.loads(request.body or b"null")  # the API's one JSON policy
    except ValueError as exc:
        raise untrusted.api_error(exc) from exc
    if not isinstance(body, dict):
        raise exceptions.ParseError("Expected a JSON object.")
    return body


def _text(body: dict[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise exceptions.ValidationError({"text": ["A non-empty string is required."]})
    if len(text) > settings.MEDIA_MAX_TEXT_CHARS:
        raise PayloadTooLarge(
            f"The text is {len(text)} characters; the limit is {settings.MEDIA_MAX_TEXT_CHARS}."
        )
    return text


def _model(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise exceptions.ValidationError({"model": ["A model name is required."]})
    return untrusted.text(value, "model")  # a query parameter is not checked by a parser


def _flag(request: HttpRequest, name: str) -> bool:
    return request.GET.get(name, "").lower() in ("1", "true", "yes")


async def _first(stream_id: str) -> list[Event]:
    """The stream's first events, waiting up to MEDIA_FIRST_EVENT_TIMEOUT_SECONDS."""
    timeout_ms = int(settings.MEDIA_FIRST_EVENT_TIMEOUT_SECONDS * 1000)
    return await asyncio.to_thread(get_log().read, stream_id, None, block_ms=timeout_ms, count=100)


def _cancel(stream_id: str) -> None:
    try:
        get_log().request_cancel(stream_id)
    except StreamNotFound:
        pass
    except Exception:  # a client that left must not turn into a server error
        log.exception("could not cancel media stream %s", stream_id)


def _cancel_abandoned(stream_id: str) -> Callable[[bool], None]:
    """``on_close`` of the answer of the client that started the work: leaving before the
    end cancels the producer (the worker checks the flag between chunks)."""

    def on_close(abandoned: bool) -> None:
        if abandoned:
            _cancel(stream_id)

    return on_close


class _Wav:
    """Speech as one WAV of unknown length (RIFF sizes 0xFFFFFFFF), PCM as each sentence is
    ready; the header goes out with the first sentence (it carries the sample rate). Other
    events (the producer's ``error`` included) have no place in a WAV: nothing is sent."""

    def __init__(self) -> None:
        self.header_sent = False

    def __call__(self, event: Event) -> bytes | None:
        if event.event != "chunk" or "pcm" not in event.data:
            return None
        pcm = base64.b64decode(event.data["pcm"])
        if self.header_sent:
            return pcm
        self.header_sent = True
        return wav_header(int(event.data["sample_rate"]), UNKNOWN_SIZE) + pcm


def _mjpeg(event: Event) -> bytes | None:
    if event.event != "chunk" or "jpeg" not in event.data:
        return None
    jpeg = base64.b64decode(event.data["jpeg"])
    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
    return head.encode() + jpeg + b"\r\n"


def _started_body(request: HttpRequest, kind: str, started: services.Started) -> dict[str, Any]:
    sid = started.stream_id
    body = {
        "id": sid,
        "kind": kind,
        "model": started.model,
        "version": started.version,
        "stream_url": f"/v1/streams/{sid}",
        "events_url": f"/v1/streams/{sid}/events",
        "ws_url": f"/ws/v1/streams/{sid}",
    }
    if kind == "video" and _flag(request, "preview"):
        body["preview_url"] = f"/v1/media/video/{sid}/preview"
    return body


async def _respond(
    request: HttpRequest,
    kind: str,
    start: Callable[[KeyContext], services.Started],
    *,
    wav: bool = False,
) -> HttpResponseBase:
    respond_async = "respond-async" in request.headers.get("Prefer", "")
    hold = Hold()
    try:
        ctx = await sync_to_async(authenticate_sse)(request, "infer")
        if not respond_async:  # a 202 holds nothing: its reader takes a slot of its own
            hold = await hold_take_async(ctx.tenant, presented_credential(request))
        started = await unless_abandoned(
            sync_to_async(start)(ctx), lambda made: _cancel(made.stream_id)
        )
    except (exceptions.APIException, MediaInputError) as exc:
        await asyncio.to_thread(hold_release, hold)
        return _problem(request, exc)
    except Http404:
        await asyncio.to_thread(hold_release, hold)
        return problem_response(
            404, slug="not-found", detail="No such model.", instance=request.path
        )
    except BaseException:  # cancelled: the client left (the work it started is undone)
        threading.Thread(target=hold_release, args=(hold,), daemon=True).start()
        raise
    body = _started_body(request, kind, started)
    if respond_async:
        response: HttpResponseBase = JsonResponse(body, status=202)
        response["Location"] = body["stream_url"]
        return response
    try:
        first = await _first(started.stream_id)
    except BaseException:
        threading.Thread(target=_discard, args=(started, hold), daemon=True).start()
        raise
    errors = [e for e in first if e.event == "error"]
    if errors and not any(e.event not in ("error", END) for e in first):
        await asyncio.to_thread(hold_release, hold)
        data = errors[0].data
        problem = _input_problem(
            request,
            str(data.get("code")),
            str(data.get("message", "")),
            int(data.get("status", 502)),
        )
        return _with_stream(problem, started.stream_id)
    on_close = _cancel_abandoned(started.stream_id)
    headers = {"X-Stream-Id": started.stream_id, "Location": body["stream_url"]}
    if wav:
        return event_response(
            request,
            started.stream_id,
            hold=hold,
            render=_Wav(),
            content_type="audio/wav",
            first=None,
            heartbeat=None,
            on_close=on_close,
            headers=headers,
        )
    return event_response(request, started.stream_id, hold=hold, on_close=on_close, headers=headers)


def _discard(started: services.Started, hold: Hold) -> None:
    """The client left (or the first read failed) before its answer: nothing reads the
    stream, so its work stops and its slot is free."""
    _cancel(started.stream_id)
    hold_release(hold)


def _method(request: HttpRequest, allowed: str) -> HttpResponseBase | None:
    if request.method == allowed:
        return None
    response = problem_response(405, slug="method-not-allowed", instance=request.path)
    response["Allow"] = allowed
    return response


@csrf_exempt
async def transcriptions(request: HttpRequest) -> HttpResponseBase:
    """``POST /v1/media/transcriptions``: a 16 kHz mono 16-bit WAV → partial and final
    transcripts as they are recognised."""
    if (refused := _method(request, "POST")) is not None:
        return refused

    def start(ctx: KeyContext) -> services.Started:
        blob, _ = _upload(request, settings.MEDIA_MAX_AUDIO_BYTES, "audio", WAV_TYPES)
        pcm = read_wav(blob)  # the web tier checks the format: no engine needed for that
        if pcm.duration > settings.MEDIA_MAX_AUDIO_SECONDS:
            raise PayloadTooLarge(
                f"The audio lasts {pcm.duration:.1f} s; the limit is "
                f"{settings.MEDIA_MAX_AUDIO_SECONDS:g} s."
            )
        return services.media_start(
            kind="transcription",
            tenant=ctx.tenant,
            item={},
            model_name=_model(request.GET.get("model")),
            upload=blob,
            suffix=".wav",
        )

    return await _respond(request, "transcription", start)


@csrf_exempt
async def speech(request: HttpRequest) -> HttpResponseBase:
    """``POST /v1/media/speech`` ``{"text", "sample_rate"?, "model"?}`` → speech, sentence by
    sentence (SSE ``chunk`` events with base64 PCM, or a WAV with ``Accept: audio/wav``)."""
    if (refused := _method(request, "POST")) is not None:
        return refused

    def start(ctx: KeyContext) -> services.Started:
        body = _json(request)
        item: dict[str, Any] = {"text": _text(body)}
        if body.get("sample_rate") is not None:
            if not isinstance(body["sample_rate"], int):
                raise exceptions.ValidationError({"sample_rate": ["An integer is required."]})
            item["sample_rate"] = body["sample_rate"]
        return services.media_start(
            kind="audio", tenant=ctx.tenant, item=item, model_name=_model(body.get("model"))
        )

    wav = "audio/wav" in request.headers.get("Accept", "")
    return await _respond(request, "audio", start, wav=wav)


@csrf_exempt
async def translations(request: HttpRequest) -> HttpResponseBase:
    """``POST /v1/media/translations`` ``{"text", "model"?}`` → translated sentences."""
    if (refused := _method(request, "POST")) is not None:
        return refused

    def start(ctx: KeyContext) -> services.Started:
        body = _json(request)
        return services.media_start(
            kind="translation",
            tenant=ctx.tenant,
            item={"text": _text(body)},
            model_name=_model(body.get("model")),
        )

    return await _respond(request, "translation", start)


@csrf_exempt
async def video(request: HttpRequest) -> HttpResponseBase:
    """``POST /v1/media/video[?every=N&preview=true]``: a video → faces per frame."""
    if (refused := _method(request, "POST")) is not None:
        return refused

    def start(ctx: KeyContext) -> services.Started:
        every = untrusted.query_int(request.GET, "every", minimum=1) or 1
        blob, origin = _upload(
            request, settings.MEDIA_MAX_VIDEO_BYTES, "video", tuple(VIDEO_SUFFIXES)
        )
        suffix = VIDEO_SUFFIXES.get(origin)
        if suffix is None:  # a multipart file name
            suffix = "." + origin.rpartition(".")[2][:8].lower() if "." in origin else ""
            suffix = suffix if suffix[1:].isalnum() else ""
        return services.media_start(
            kind="video",
            tenant=ctx.tenant,
            item={"every": every, "preview": _flag(request, "preview")},
            model_name=_model(request.GET.get("model")),
            upload=blob,
            suffix=suffix,
        )

    return await _respond(request, "video", start)


async def video_preview(request: HttpRequest, stream_id: str) -> HttpResponseBase:
    """``GET /v1/media/video/{id}/preview``: the annotated frames of a video stream started
    with ``preview=true``, as MJPEG (``multipart/x-mixed-replace``; an ``<img>`` shows it)."""
    if (refused := _method(request, "GET")) is not None:
        return refused
    try:
        ctx = await sync_to_async(authenticate_sse)(request, "streams")
    except exceptions.APIException as exc:
        return _problem(request, exc)
    meta = await asyncio.to_thread(get_log().meta, stream_id)
    if meta is None or meta.tenant_id != ctx.tenant.pk or meta.kind != "video":
        return problem_response(404, slug="not-found", instance=request.path)
    try:
        hold = await hold_take_async(ctx.tenant, presented_credential(request))
    except TooManyStreams as exc:
        return _problem(request, exc)
    # A bystander: leaving does not cancel the video's work (its starter may still read).
    return event_response(
        request,
        stream_id,
        hold=hold,
        render=_mjpeg,
        content_type="multipart/x-mixed-replace; boundary=frame",
        first=None,
        heartbeat=None,
    )
