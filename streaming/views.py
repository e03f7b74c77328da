"""Server-Sent Events of a stream, and its metadata.

``GET /v1/streams/{id}/events`` is an async view (daphne; nginx routes ``/v1/streams/``
there): ``id:``/``event:``/``data:`` lines, resumed from ``Last-Event-ID`` (or ``?after=``),
a comment line every ``SSE_HEARTBEAT_SECONDS`` while the stream is quiet, until the ``end``
event or the client goes away — a long-lived response (:mod:`streaming.responses`: a stream
slot, the credential re-checked). The helpers here authenticate the other SSE entry points
outside REST framework too (jobs, media).
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from plumbing.problems import exception_response, problem_response
from streaming.access import staff_may_read, staff_permissions_for
from streaming.eventlog import StreamMeta, get_log, valid_id
from streaming.responses import TooManyStreams, event_response, hold_take_async
from tenants.authentication import authenticate_credential, presented_credential
from tenants.limits import enforce_plan
from tenants.selectors import KeyContext


def owned_stream(ctx: KeyContext, stream_id: str) -> StreamMeta | None:
    """The stream's metadata if the caller's tenant owns it (another tenant's is "missing")."""
    meta = get_log().meta(stream_id)
    return meta if meta is not None and meta.tenant_id == ctx.tenant.pk else None


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
    elif await sync_to_async(owned_stream)(ctx, stream_id) is None:
        return problem_response(404, slug="not-found", instance=request.path)
    try:
        hold = await hold_take_async(ctx.tenant if ctx else None, presented_credential(request))
    except TooManyStreams as exc:
        return refusal(request, exc)
    return event_response(request, stream_id, hold=hold, after=after)


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
