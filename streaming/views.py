"""Server-Sent Events and stream metadata.

SSE is served by daphne (nginx routes ``/v1/streams/`` there): an async view that reads the
stream log and writes ``id:``/``event:``/``data:`` lines, resumes from ``Last-Event-ID`` (or
``?after=``), sends a comment line every ``SSE_HEARTBEAT_SECONDS`` while the stream is quiet,
and stops after the ``end`` event or when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.problems import exception_response, problem_response
from streaming import fanout, flow, services
from streaming.access import staff_may_read, staff_permissions_for
from streaming.log import END, GAP, Event, StreamLog, StreamMeta, StreamNotFound, get_log, valid_id
from streaming.services import Lease
from tenants.authentication import authenticate_credential, presented_credential
from tenants.limits import enforce_plan
from tenants.selectors import KeyContext

# How long one blocking read of a WSGI-served stream waits before it looks at the heartbeat.
READ_BLOCK_MS = 1000


def sse_frame(event: Event) -> str:
    """One event as SSE lines. A ``gap`` carries no id, so a reconnect resumes after it."""
    lines = [] if event.event == GAP else [f"id: {event.id}"]
    lines += [f"event: {event.event}", f"data: {json.dumps(event.data, separators=(',', ':'))}"]
    return "\n".join(lines) + "\n\n"


def owned_stream(ctx: KeyContext, stream_id: str) -> StreamMeta | None:
    """The stream's metadata if the caller's tenant owns it (another tenant's is "missing")."""
    meta = get_log().meta(stream_id)
    return meta if meta is not None and meta.tenant_id == ctx.tenant.pk else None


async def _frames(
    stream_id: str,
    after: str | None,
    scope: MutableMapping[str, Any],
    lease: Lease | None,
    credential: str | None = None,
) -> AsyncIterator[str]:
    """The response body. The credential is checked again every ``WS_REAUTH_SECONDS``: a
    revoked key's stream ends with an ``error`` event (``unauthenticated``)."""
    loop = asyncio.get_running_loop()
    quiet_since = checked = loop.time()
    tick = min(settings.SSE_HEARTBEAT_SECONDS, settings.WS_REAUTH_SECONDS)
    try:
        yield ": connected\n\n"  # proxies and clients see the stream open at once
        async for batch in fanout.hub().follow(stream_id, after, idle=tick):
            now = loop.time()
            if credential is not None and now - checked >= settings.WS_REAUTH_SECONDS:
                checked = now
                try:
                    await sync_to_async(authenticate_credential)(credential)
                except exceptions.AuthenticationFailed:
                    yield sse_frame(Event(id="", event="error", data={"code": "unauthenticated"}))
                    return
            if batch:
                quiet_since = now
            elif now - quiet_since >= settings.SSE_HEARTBEAT_SECONDS:
                quiet_since = now
                yield ": heartbeat\n\n"
            if batch:
                # Stop reading the log while the client's socket is backed up (streaming.flow);
                # one write per batch (at most fanout.BATCH events).
                await flow.drain(scope)
                yield "".join(sse_frame(item.event) for item in batch)
    except StreamNotFound:
        yield sse_frame(Event(id="", event="error", data={"code": "stream_expired"}))
    finally:
        if lease is not None:
            await sync_to_async(services.stream_slot_release)(lease)


def authenticate_sse(request: HttpRequest, scope: str = "streams") -> KeyContext:
    """What DRF's authentication and plan throttle do, for the async SSE views (outside DRF)."""
    raw = presented_credential(request)
    if raw is None:
        raise exceptions.NotAuthenticated()
    ctx = authenticate_credential(raw)
    if not ctx.has_scope(scope):
        raise exceptions.PermissionDenied(f"This API key lacks the '{scope}' scope.")
    enforce_plan(request, ctx)
    return ctx


def refusal(request: HttpRequest, exc: exceptions.APIException) -> HttpResponseBase:
    """An authentication or limit refusal of an SSE view as problem+json."""
    return exception_response(request, exc)


def resume_after(request: HttpRequest) -> tuple[str | None, HttpResponseBase | None]:
    """The id to resume after (``Last-Event-ID`` or ``?after=``), or a 422 when malformed."""
    after = request.headers.get("Last-Event-ID") or request.GET.get("after") or None
    if after is not None and not valid_id(after):
        return None, problem_response(
            422,
            slug="validation-error",
            detail="Last-Event-ID is not a stream id.",
            errors=[
                {"field": "Last-Event-ID", "detail": "Expected <ms>-<seq>.", "code": "invalid"}
            ],
        )
    return after, None


def _staff_refused(meta: StreamMeta) -> exceptions.PermissionDenied:
    needed = ", ".join(staff_permissions_for(meta))
    return exceptions.PermissionDenied(f"Your staff account lacks the permission {needed}.")


async def is_staff(request: HttpRequest) -> bool:
    """A logged-in operator (admin session): may follow any stream, platform streams
    (metrics, worker logs) included, and holds no tenant slot."""
    auser = getattr(request, "auser", None)
    if auser is None:
        return False
    user = await auser()
    return bool(user.is_active and user.is_staff)


async def stream_events(request: HttpRequest, stream_id: str) -> HttpResponseBase:
    """``GET /v1/streams/{stream_id}/events``: the stream as Server-Sent Events."""
    ctx: KeyContext | None = None
    staff = presented_credential(request) is None and await is_staff(request)
    try:
        if not staff:
            ctx = await sync_to_async(authenticate_sse)(request)
    except exceptions.APIException as exc:
        return refusal(request, exc)
    after, invalid = resume_after(request)
    if invalid is not None:
        return invalid
    if ctx is None:  # staff
        meta = await sync_to_async(get_log().meta)(stream_id)
        if meta is None:
            return problem_response(404, slug="not-found", instance=request.path)
        if not await sync_to_async(staff_may_read)(await request.auser(), meta):
            return refusal(request, _staff_refused(meta))
        lease = None
    elif await sync_to_async(owned_stream)(ctx, stream_id) is None:
        return problem_response(404, slug="not-found", instance=request.path)
    else:
        lease = await sync_to_async(services.stream_slot_take)(ctx.tenant)
    if ctx is not None and lease is None:
        return problem_response(
            429,
            slug="too-many-streams",
            detail=f"All {ctx.tenant.concurrent_streams} concurrent streams are open.",
            instance=request.path,
            headers={"Retry-After": "1"},
        )
    scope = getattr(request, "scope", {})
    response = StreamingHttpResponse(
        _frames(stream_id, after, scope, lease, presented_credential(request)),
        content_type="text/event-stream",
    )
    # Also when the body is never iterated (the client left before the first byte).
    if lease is not None:
        held = lease
        response._resource_closers.append(  # type: ignore[attr-defined]
            lambda: services.stream_slot_release(held)
        )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class StreamView(APIView):
    """A stream's metadata: kind, bounds, whether it has ended."""

    required_scope = "streams"
    # A staff session passes here; what it may read is decided per stream (streaming.access).
    staff_permissions: dict[str, tuple[str, ...]] = {"GET": ()}

    @extend_schema(
        responses=inline_serializer(
            "Stream",
            {
                "id": serializers.CharField(),
                "kind": serializers.CharField(),
                "maxlen": serializers.IntegerField(),
                "ttl": serializers.IntegerField(),
                "closed": serializers.BooleanField(),
                "events_url": serializers.CharField(),
            },
        )
    )
    def get(self, request: Request, stream_id: str) -> Response:
        ctx = request.auth
        if isinstance(ctx, KeyContext):
            meta = owned_stream(ctx, stream_id)
        else:  # a staff session (IsTenant lets no one else in)
            meta = get_log().meta(stream_id)
            if meta is not None and not staff_may_read(request.user, meta):
                raise _staff_refused(meta)
        if meta is None:
            raise exceptions.NotFound()
        return Response(
            {
                "id": stream_id,
                "kind": meta.kind,
                "maxlen": meta.maxlen,
                "ttl": meta.ttl,
                "closed": meta.closed,
                "events_url": f"/v1/streams/{stream_id}/events",
            }
        )


# --- SSE for producers' endpoints (streaming inference) ---------------------------------------

Render = Callable[[Event], str | None]


async def stream_events_async(
    stream_log: StreamLog,
    stream_id: str,
    after: str | None = None,
    scope: MutableMapping[str, Any] | None = None,
) -> AsyncIterator[Event | None]:
    """A stream's events up to and including ``end``; ``None`` when a heartbeat is due; an
    ``error`` event ``stream_expired`` if the stream disappears under the reader. Read through
    the process's one reader of the stream (streaming.fanout); with the request's ``scope``,
    the reading pauses while the client's socket is backed up (streaming.flow)."""
    hub = fanout.hub() if stream_log is get_log() else fanout.Hub(stream_log)
    try:
        async for batch in hub.follow(stream_id, after, idle=settings.SSE_HEARTBEAT_SECONDS):
            if not batch:
                yield None
            for item in batch:
                if scope is not None:
                    await flow.drain(scope)
                yield item.event
    except StreamNotFound:
        yield Event(id="", event="error", data={"code": "stream_expired"})


def stream_events_sync(
    stream_log: StreamLog, stream_id: str, after: str | None = None
) -> Iterator[Event | None]:
    """:func:`stream_events_async` for a WSGI server (a blocking generator)."""
    quiet_since = time.monotonic()
    while True:
        try:
            events = stream_log.read(stream_id, after, block_ms=READ_BLOCK_MS, count=500)
        except StreamNotFound:
            yield Event(id="", event="error", data={"code": "stream_expired"})
            return
        for event in events:
            yield event
            if event.event != GAP:
                after = event.id
            if event.event == END:
                return
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settings.SSE_HEARTBEAT_SECONDS:
            quiet_since = time.monotonic()
            yield None


class _SSEResponse(StreamingHttpResponse):
    """Runs ``on_close`` exactly once: from the generator when it ends or is closed, or from
    ``close()`` when the server drops a response whose generator never started."""

    def __init__(self, content: Any, on_close: Callable[[bool], None] | None) -> None:
        super().__init__(content, content_type="text/event-stream")
        self._on_close = on_close
        self._closed_lock = threading.Lock()

    def claim(self) -> Callable[[bool], None] | None:
        with self._closed_lock:
            on_close, self._on_close = self._on_close, None
        return on_close

    def close(self) -> None:
        super().close()
        on_close = self.claim()
        if on_close is not None:
            on_close(True)


def sse_response(
    request: HttpRequest,
    stream_id: str,
    *,
    after: str | None = None,
    render: Render = sse_frame,
    last: str | None = None,
    on_close: Callable[[bool], None] | None = None,
    headers: dict[str, str] | None = None,
) -> StreamingHttpResponse:
    """A stream as ``text/event-stream`` for an endpoint that has just started the stream.

    ``after`` resumes after that event id (a reconnect's ``Last-Event-ID``); ``render`` turns
    an event into SSE text (None: nothing sent); ``last`` is sent after the
    ``end`` event (OpenAI's ``data: [DONE]``); ``on_close(abandoned)`` runs once when the
    response is over, with ``abandoned`` true when the client went away before the end (the
    producer should stop: nobody is reading). Served by daphne the reader is async (a
    disconnect cancels it at once, and ``on_close`` runs on a thread of its own, off the event
    loop); under a WSGI server it is a blocking generator that notices the disconnect at its
    next write.
    """
    stream_log = get_log()

    async def frames_async() -> AsyncIterator[str]:
        finished = False
        try:
            yield ": connected\n\n"
            scope = getattr(request, "scope", None)
            async for event in stream_events_async(stream_log, stream_id, after, scope=scope):
                text = ": heartbeat\n\n" if event is None else render(event)
                if text:
                    yield text
            if last:
                yield last
            finished = True
        finally:
            callback = response.claim()
            if callback is not None:
                # Not awaited (the request task may be being cancelled) and not on the loop.
                threading.Thread(target=callback, args=(not finished,), daemon=True).start()

    def frames_sync() -> Iterator[str]:
        finished = False
        try:
            yield ": connected\n\n"
            for event in stream_events_sync(stream_log, stream_id, after):
                text = ": heartbeat\n\n" if event is None else render(event)
                if text:
                    yield text
            if last:
                yield last
            finished = True
        finally:
            callback = response.claim()
            if callback is not None:
                callback(not finished)

    content = frames_async() if isinstance(request, ASGIRequest) else frames_sync()
    response = _SSEResponse(content, on_close)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    for name, value in (headers or {}).items():
        response[name] = value
    return response
