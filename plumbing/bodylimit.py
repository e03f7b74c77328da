"""Request body limits, held by every server before the body is read and before
authentication.

One rule (:func:`body_limit`): an API path takes at most ``API_MAX_BODY_BYTES``, a media
upload at most its own limit (plus room for a multipart envelope). Each server applies it as
the body arrives, declared (``Content-Length``) or chunked, and answers 413 problem+json as
soon as the limit is crossed, so an oversized body never reaches memory or a credential check:

- gunicorn: :class:`LimitWSGI` around the WSGI application (``config.wsgi``);
- uvicorn (the unary server) and any other ASGI server: :class:`LimitASGI`;
- daphne, which reads the whole body before it calls the application:
  ``streaming.server`` checks it in daphne's own request object, chunk by chunk.

``plumbing.middleware.ApiBodyLimitMiddleware`` applies the same rule to a declared length for
whatever reaches Django another way (the test client).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from django.conf import settings
from django.urls import Resolver404, resolve

from plumbing import metrics
from plumbing.problems import PROBLEM_CONTENT_TYPE, is_api_path, problem_body

access_log = logging.getLogger("sluice.access")

# Room for the multipart envelope (boundaries, part headers) around a media file.
MULTIPART_ALLOWANCE = 64 * 1024
# The media uploads (by URL name) and the setting that bounds each one's file.
MEDIA_UPLOADS = {
    "media-transcriptions": "MEDIA_MAX_AUDIO_BYTES",
    "media-video": "MEDIA_MAX_VIDEO_BYTES",
}
READ_BLOCK = 64 * 1024


def body_limit(path: str) -> int | None:
    """The most bytes a request body on ``path`` may have; None: no limit here (the admin's
    forms and artifact uploads, which Django streams to disk under its own limits)."""
    if not is_api_path(path):
        return None
    limit = int(settings.API_MAX_BODY_BYTES)
    if path.startswith("/v1/media/"):
        try:
            name = resolve(path).url_name
        except Resolver404:
            name = None
        setting = MEDIA_UPLOADS.get(name or "")
        if setting is not None:
            limit = min(limit, int(getattr(settings, setting)) + MULTIPART_ALLOWANCE)
    return limit


def declared_length(value: str | bytes | None) -> int | None:
    """A ``Content-Length`` as a number; None when absent or malformed (the server's parser
    or Django answers a malformed one with 400)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return int(text) if text.strip().isdigit() else None


def too_large(path: str, limit: int, length: int | None) -> tuple[bytes, list[tuple[str, str]]]:
    """The 413 problem's body and headers. ``Connection: close``: the rest of the body is not
    worth reading."""
    if length is not None:
        detail = f"Request body is {length} bytes; the limit is {limit}."
    else:
        detail = f"Request body is over the limit of {limit} bytes."
    body = json.dumps(
        problem_body(413, slug="payload-too-large", detail=detail, instance=path)
    ).encode()
    headers = [
        ("Content-Type", PROBLEM_CONTENT_TYPE),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    return body, headers


def log_refused(*, server: str, method: str, path: str, started: float) -> None:
    """The refused request's log line and metrics, as the request log middleware would have
    written them had the request reached it."""
    seconds = time.perf_counter() - started
    metrics.observe_request(asgi=server != "wsgi", method=method, status=413, seconds=seconds)
    access_log.info(
        "%s %s 413",
        method,
        path,
        extra={"method": method, "path": path, "status": 413, "duration_ms": seconds * 1000},
    )


def _spool(stream: Any, limit: int) -> tuple[Any, int] | None:
    """A chunked body read into a spooled file (memory up to Django's upload threshold, disk
    beyond it) and its size; None when it is over ``limit`` (read no further)."""
    spool = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE)  # noqa: SIM115 - handed to the request
    size = 0
    while block := stream.read(READ_BLOCK):
        size += len(block)
        if size > limit:
            spool.close()
            return None
        spool.write(block)
    spool.seek(0)
    return spool, size


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class LimitWSGI:
    """The WSGI application (``app``) with the body limit in front. gunicorn hands a chunked
    body to the application as an unterminated stream, which Django reads as empty (it trusts
    ``CONTENT_LENGTH`` alone): it is read here, up to the limit, and given a length."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        limit = body_limit(path)
        if limit is None:
            return self.app(environ, start_response)
        started = time.perf_counter()
        length = declared_length(environ.get("CONTENT_LENGTH"))
        refused = length is not None and length > limit
        if length is None and "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower():
            spooled = _spool(environ["wsgi.input"], limit)
            refused = spooled is None
            if spooled is not None:
                environ["wsgi.input"], size = spooled
                environ["CONTENT_LENGTH"] = str(size)
        if not refused:
            return self.app(environ, start_response)
        body, headers = too_large(path, limit, length)
        start_response("413 Request Entity Too Large", headers)
        method = str(environ.get("REQUEST_METHOD"))
        log_refused(server="wsgi", method=method, path=path, started=started)
        return [body]


Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_too_large(send: Send, path: str, limit: int, length: int | None) -> None:
    body, headers = too_large(path, limit, length)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class LimitASGI:
    """The ASGI application with the body limit in front. A declared oversized body is
    refused before a byte of it is read. A chunked one is read here, into a spooled file, and
    refused when its bytes cross the limit; within it, the application gets it with a
    ``Content-Length`` (Django and REST framework read a body by its declared length alone)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = body_limit(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or ())
        length = declared_length(headers.get(b"content-length"))
        if length is None and b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            spooled = await _spool_messages(receive, limit)
            if spooled is None:
                return  # the client went away
            body, size = spooled
            if body is not None:
                scope = {**scope, "headers": _with_length(scope["headers"], size)}
                await self.app(scope, _replay(body, size, receive), send)
                return
        elif length is None or length <= limit:
            await self.app(scope, receive, send)  # the server holds the client to its length
            return
        await send_too_large(send, scope["path"], limit, length)
        log_refused(server="asgi", method=scope["method"], path=scope["path"], started=started)


async def _spool_messages(receive: Receive, limit: int) -> tuple[Any | None, int] | None:
    """A chunked body from its ``http.request`` messages into a spooled file, and its size;
    (None, size) once it is over ``limit`` (read no further); None if the client left."""
    spool = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE)  # noqa: SIM115 - handed to the application
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            spool.close()
            return None
        block = message.get("body", b"")
        size += len(block)
        if size > limit:
            spool.close()
            return None, size
        spool.write(block)
        if not message.get("more_body"):
            spool.seek(0)
            return spool, size


def _with_length(headers: Iterable[tuple[bytes, bytes]], size: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k not in (b"transfer-encoding", b"content-length")]
    return [*kept, (b"content-length", str(size).encode())]


def _replay(body: Any, size: int, receive: Receive) -> Receive:
    """``receive`` for the application: the spooled body, then the client's messages."""
    done = False

    async def again() -> Message:
        nonlocal done
        if done:
            return await receive()
        block = body.read(READ_BLOCK)
        more = body.tell() < size
        if not more:
            done = True
            body.close()
        return {"type": "http.request", "body": block, "more_body": more}

    return again
