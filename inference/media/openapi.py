"""The media endpoints in the OpenAPI schema (plain async views, which drf-spectacular does not
discover). Formats, limits and event shapes: docs/media.md."""

from __future__ import annotations

from typing import Any

_SECURITY: list[dict[str, list[str]]] = [{"ApiKeyAuth": []}, {"BearerAuth": []}]
_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`respond-async`: answer 202 with the stream's URLs instead of the events",
    "schema": {"type": "string"},
}
_MODEL = {
    "name": "model",
    "in": "query",
    "required": False,
    "description": "another model of the same kind",
    "schema": {"type": "string"},
}
_FILE = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {"file": {"type": "string", "format": "binary"}},
            "required": ["file"],
        }
    }
}
_STARTED = {
    "type": "object",
    "properties": {
        name: {"type": "string"}
        for name in ("id", "kind", "model", "version", "stream_url", "events_url", "ws_url")
    },
}


def _problems(*codes: int) -> dict[str, Any]:
    reasons = {
        401: "Not authenticated",
        403: "The key lacks the infer scope",
        404: "No such model (or not in the tenant's plan)",
        413: "Over a MEDIA_MAX_* limit",
        415: "Not a format this endpoint takes",
        422: "Invalid input (field named) or unusable media",
        502: "The engine failed",
        503: "No version can serve now (engine missing, queue full)",
    }
    content = {"application/problem+json": {"schema": {"type": "object"}}}
    return {str(c): {"description": reasons[c], "content": content} for c in codes}


def _post(
    op: str,
    summary: str,
    body: dict[str, Any],
    *,
    params: list[dict[str, Any]],
    codes: tuple[int, ...],
    extra_200: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ok = {"text/event-stream": {"schema": {"type": "string"}}, **(extra_200 or {})}
    return {
        "post": {
            "operationId": op,
            "summary": summary,
            "description": "Events, formats and limits: docs/media.md.",
            "tags": ["media"],
            "parameters": [*params, _PREFER],
            "requestBody": {"required": True, "content": body},
            "security": _SECURITY,
            "responses": {
                "200": {"description": "The stream's events as they are made", "content": ok},
                "202": {
                    "description": "Started (Prefer: respond-async)",
                    "content": {"application/json": {"schema": _STARTED}},
                },
                **_problems(401, 403, 404, *codes, 503),
            },
        }
    }


def _text_body(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "text": {"type": "string", "minLength": 1},
        "model": {"type": "string"},
    }
    props.update(extra or {})
    return {
        "application/json": {
            "schema": {"type": "object", "properties": props, "required": ["text"]}
        }
    }


def add_media_paths(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict:
    paths = result.setdefault("paths", {})
    paths["/v1/media/transcriptions"] = _post(
        "media_transcriptions",
        "Transcribe a 16 kHz mono 16-bit WAV, streaming partial and final transcripts",
        {"audio/wav": {"schema": {"type": "string", "format": "binary"}}, **_FILE},
        params=[_MODEL],
        codes=(413, 415, 422, 502),
    )
    paths["/v1/media/speech"] = _post(
        "media_speech",
        "Speak text sentence by sentence (base64 PCM events, or Accept: audio/wav)",
        _text_body(
            {"sample_rate": {"type": "integer", "enum": [8000, 16000, 22050, 24000, 44100, 48000]}}
        ),
        params=[],
        codes=(413, 415, 422, 502),
        extra_200={"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
    )
    paths["/v1/media/translations"] = _post(
        "media_translations",
        "Translate text, streaming each translated sentence",
        _text_body(),
        params=[],
        codes=(413, 415, 422, 502),
    )
    paths["/v1/media/video"] = _post(
        "media_video",
        "Faces in each frame of a video (optional MJPEG preview)",
        {"video/mp4": {"schema": {"type": "string", "format": "binary"}}, **_FILE},
        params=[
            _MODEL,
            {"name": "every", "in": "query", "required": False, "schema": {"type": "integer"}},
            {"name": "preview", "in": "query", "required": False, "schema": {"type": "boolean"}},
        ],
        codes=(413, 415, 422, 502),
    )
    paths["/v1/media/video/{stream_id}/preview"] = {
        "get": {
            "operationId": "media_video_preview",
            "summary": "The annotated frames of a video stream as MJPEG",
            "tags": ["media"],
            "parameters": [
                {"name": "stream_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "security": _SECURITY,
            "responses": {
                "200": {
                    "description": "multipart/x-mixed-replace; boundary=frame",
                    "content": {"multipart/x-mixed-replace": {"schema": {"type": "string"}}},
                },
                **_problems(401, 404),
            },
        }
    }
    return result
