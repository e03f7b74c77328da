"""Server-Sent Events and stream metadata.

SSE is served by daphne (nginx routes ``/v1/streams/`` there): an async view that reads the
stream log and writes ``id:``/``event:``/``data:`` lines, resumes from ``Last-Event-ID`` (or
``?after=``), sends a comment line every ``SSE_HEARTBEAT_SECONDS`` while the stream is quiet,
and stops after the ``end`` event or when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.problems import problem_response
from streaming import fanout, flow, services
from streaming.log import GAP, Event, StreamMeta, StreamNotFound, get_log, valid_id
from streaming.services import Lease
from tenants.authentication import authenticate_credential, presented_credential
from tenants.limits import enforce_plan
from tenants.selectors import KeyContext


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


def _authenticate(request: HttpRequest) -> KeyContext:
    raw = presented_credential(request)
    if raw is None:
        raise exceptions.NotAuthenticated()
    ctx = authenticate_credential(raw)
    if not ctx.has_scope("streams"):
        raise exceptions.PermissionDenied("This API key lacks the 'streams' scope.")
    enforce_plan(request, ctx)
    return ctx


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
            ctx = await sync_to_async(_authenticate)(request)
    except exceptions.APIException as exc:
        status = exc.status_code
        headers = {"WWW-Authenticate": 'Bearer realm="sluice"'} if status == 401 else {}
        wait = getattr(exc, "wait", None)
        if wait:
            headers["Retry-After"] = str(int(wait))
        return problem_response(
            status, detail=str(exc.detail), instance=request.path, headers=headers
        )
    after = request.headers.get("Last-Event-ID") or request.GET.get("after") or None
    if after is not None and not valid_id(after):
        return problem_response(
            422,
            slug="validation-error",
            detail="Last-Event-ID is not a stream id.",
            errors=[
                {"field": "Last-Event-ID", "detail": "Expected <ms>-<seq>.", "code": "invalid"}
            ],
        )
    if ctx is None:  # staff
        if await sync_to_async(get_log().meta)(stream_id) is None:
            return problem_response(404, slug="not-found", instance=request.path)
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
            meta = get_log().meta(stream_id) if request.user.is_staff else None
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
