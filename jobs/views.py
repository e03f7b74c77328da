"""``/v1/jobs`` and ``/v1/dead-tasks``: thin views over :mod:`jobs.services` and
:mod:`jobs.selectors`. Every queryset passes through the tenant scoping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import exceptions, generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.catalog import selectors as inference_selectors
from jobs import inputs, selectors, services
from jobs.events import stream_open
from jobs.feed import Feed, lines_async, lines_sync
from jobs.models import Job, JobStatus, Task, TaskStatus
from jobs.selectors import Cursor
from jobs.serializers import (
    DeadTaskQuerySerializer,
    DeadTaskSerializer,
    JobCreateSerializer,
    JobListQuerySerializer,
    JobSerializer,
    ReplaySerializer,
    ResultsQuerySerializer,
    TaskResultSerializer,
)
from plumbing import untrusted
from plumbing.pagination import IntegerCursorPagination
from plumbing.problems import problem_response
from streaming.eventlog import END, Event, get_log
from streaming.responses import (
    LiveResponse,
    TooManyStreams,
    event_response,
    hold_release,
    hold_take,
    hold_take_async,
    sse_frame,
)
from streaming.views import authenticate_sse, refusal, resume_after
from tenants.authentication import presented_credential
from tenants.models import Tenant
from tenants.scoping import TenantScopedMixin, for_request
from tenants.selectors import KeyContext

NDJSON = "application/x-ndjson"


def _tenant(request: Request) -> Tenant:
    if not isinstance(request.auth, KeyContext):
        raise exceptions.PermissionDenied("Submitting a job needs a tenant's API key.")
    return request.auth.tenant


def _job(request: Request, job_id: Any) -> Job:
    job = for_request(selectors.jobs_all(), request).filter(pk=job_id).first()
    if job is None:
        raise exceptions.NotFound()
    return job


def _idempotency_key(request: Request) -> str | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    # A structured-field string ("…") per the draft; a bare token is accepted too.
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > 255 or not key.isprintable():
        raise exceptions.ValidationError(
            {"Idempotency-Key": ["Expected 1-255 printable characters."]}
        )
    return key


def _submission(request: Request, tenant: Tenant) -> services.JobRequest:
    data: Any = request.data
    if hasattr(data, "getlist"):  # a multipart form: options arrive as a JSON string
        data = {k: data[k] for k in data}
        if isinstance(data.get("options"), str):
            try:
                data["options"] = untrusted.loads(data["options"], path="options")
            except untrusted.Refused as exc:
                raise exc.validation_error() from None
            except ValueError:
                raise exceptions.ValidationError({"options": ["Not a JSON object."]}) from None
    body = JobCreateSerializer(data=data)
    body.is_valid(raise_exception=True)
    v = body.validated_data
    model = inference_selectors.model_for_tenant(v["model"], tenant)
    version = services.job_version(model, v.get("version"))
    if v.get("file") is not None:
        source = inputs.from_upload(v["file"])
    elif v.get("input_uri"):
        source = inputs.from_uri(v["input_uri"], tenant_slug=tenant.slug)
    else:
        source = inputs.from_list(v["inputs"])
    return services.JobRequest(
        model=model,
        version=version,
        inputs=source,
        priority=v["priority"],
        chunk_size=v["chunk_size"],
        max_attempts=v["max_attempts"],
        options=dict(v.get("options") or {}),
    )


class JobListView(TenantScopedMixin, generics.ListAPIView):
    """``GET``: the tenant's jobs, newest first (``?status=``). ``POST``: submit a job; with an
    ``Idempotency-Key`` a retry gets the first answer again instead of a second job."""

    required_scope = "jobs"
    staff_permissions = {"GET": ("jobs.view_job",)}  # staff submit no jobs: no tenant
    serializer_class = JobSerializer

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()
        query = JobListQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        status = query.validated_data.get("status")
        return queryset.filter(status=status) if status else queryset

    queryset = selectors.jobs_all()

    @extend_schema(parameters=[JobListQuerySerializer])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=JobCreateSerializer,
        responses={201: JobSerializer},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                OpenApiParameter.HEADER,
                required=False,
                description="1-255 printable characters; a retry with the same key and body "
                "gets the first answer again.",
            )
        ],
    )
    def post(self, request: Request) -> Response:
        tenant = _tenant(request)
        key = _idempotency_key(request)
        answer = services.job_submit(
            tenant=tenant,
            request=_submission(request, tenant),
            key=key,
            describe=lambda job: JobSerializer(selectors.jobs_all().get(pk=job.pk)).data,
        )
        response = Response(answer.body, status=answer.status)
        if answer.replayed:
            response["Idempotent-Replayed"] = "true"
        response["Location"] = answer.body.get("urls", {}).get("self", "")
        return response


class JobDetailView(APIView):
    required_scope = "jobs"
    staff_permissions = {"GET": ("jobs.view_job",)}

    @extend_schema(responses=JobSerializer)
    def get(self, request: Request, job_id: str) -> Response:
        return Response(JobSerializer(_job(request, job_id)).data)


class JobCancelView(APIView):
    """Queued tasks never run; the job is cancelled at once (409 if it already finished)."""

    required_scope = "jobs"
    staff_permissions = {"POST": ("jobs.view_job", "jobs.change_job")}

    @extend_schema(request=None, responses=JobSerializer)
    def post(self, request: Request, job_id: str) -> Response:
        job = services.job_cancel(job=_job(request, job_id))
        return Response(JobSerializer(selectors.jobs_all().get(pk=job.pk)).data)


class ResultsPagination(IntegerCursorPagination):
    ordering = "index"
    page_size = 100


class JobResultsView(APIView):
    """Results in index order: paginated JSON, or every one as NDJSON (``Accept:
    application/x-ndjson`` or ``?format=ndjson``) streamed from a server-side cursor. With
    ``follow=true`` (NDJSON only) the response stays open and sends each task's line as it
    finishes, in commit order, until the job is no longer active (jobs.feed)."""

    required_scope = "jobs"
    staff_permissions = {"GET": ("jobs.view_job", "jobs.view_task")}  # results are tasks'

    @extend_schema(
        responses={
            200: OpenApiResponse(
                TaskResultSerializer(many=True),
                description=(
                    "Paginated JSON; with NDJSON one line per task, `{task, index, status, "
                    "result}` or `{task, index, status, error, attempts}`; with follow=true "
                    "each line also has its `cursor`, and blank lines are heartbeats."
                ),
            )
        },
        parameters=[
            OpenApiParameter(
                "status",
                str,
                required=False,
                enum=TaskStatus.values,
                description="Only tasks of this status (with follow: succeeded, dead or "
                "cancelled).",
            ),
            OpenApiParameter("format", str, required=False, enum=["json", "ndjson"]),
            OpenApiParameter(
                "limit",
                OpenApiTypes.INT,
                required=False,
                description="JSON: results per page, at most 1000 (more is clamped).",
            ),
            OpenApiParameter(
                "cursor",
                str,
                required=False,
                description="JSON: the page to read, from a page's `next` or `previous` link.",
            ),
            OpenApiParameter(
                "follow",
                OpenApiTypes.BOOL,
                required=False,
                description="NDJSON only: keep the response open and send each task's line "
                "as it finishes (commit order), ending when the job has ended and every line "
                "is sent. A blank line every SSE_HEARTBEAT_SECONDS while none is sent.",
            ),
            OpenApiParameter(
                "after",
                str,
                required=False,
                description="With follow: resume after the line with this `cursor` "
                "(`<seq>-<task>`), with no gap and no duplicate.",
            ),
        ],
    )
    def get(self, request: Request, job_id: str) -> HttpResponseBase:
        job = _job(request, job_id)
        query = ResultsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        status = query.validated_data.get("status") or None
        wants = request.query_params.get("format") or ""
        ndjson = wants == "ndjson" or (not wants and NDJSON in request.headers.get("Accept", ""))
        if query.validated_data["follow"]:
            if not ndjson:
                raise exceptions.ValidationError(
                    {
                        "follow": [
                            "Only with NDJSON (format=ndjson or Accept: application/x-ndjson)."
                        ]
                    }
                )
            after = query.validated_data.get("after") or Cursor()
            return _follow(request, job, after=after, status=status)
        if ndjson:
            response = StreamingHttpResponse(
                selectors.results_ndjson(job, status=status), content_type=NDJSON
            )
            response["Content-Disposition"] = f'inline; filename="job-{job.pk}.ndjson"'
            return response
        rows = Task.objects.filter(job=job)
        if status:
            rows = rows.filter(status=status)
        paginator = ResultsPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(TaskResultSerializer(page, many=True).data)

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # ?format=ndjson is ours, not a renderer name.
        return super().perform_content_negotiation(request, force=True)


def _follow(request: Request, job: Job, *, after: Cursor, status: str | None) -> HttpResponseBase:
    """A follower is a long-lived response (streaming.responses): it holds one of the
    tenant's concurrent-stream slots (a staff session none) until it is closed, and ends when
    its credential stops verifying."""
    tenant = request.auth.tenant if isinstance(request.auth, KeyContext) else None
    hold = hold_take(tenant, presented_credential(request._request))
    feed = Feed(job.pk, job.stream_id, after=after, status=status)
    raw = request._request
    if isinstance(raw, ASGIRequest):
        scope = getattr(raw, "scope", {})
        return LiveResponse(lines_async(feed, scope), hold=hold, content_type=NDJSON)
    return LiveResponse(lines_sync(feed), hold=hold, content_type=NDJSON)


class DeadTaskListView(TenantScopedMixin, generics.ListAPIView):
    """The dead-letter queue: tasks that exhausted their attempts (``?job=``)."""

    required_scope = "jobs"
    staff_permissions = {"GET": ("jobs.view_task",)}
    serializer_class = DeadTaskSerializer
    queryset = selectors.dead_tasks()
    tenant_field = "job__tenant"

    @extend_schema(parameters=[DeadTaskQuerySerializer])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()
        query = DeadTaskQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        job = query.validated_data.get("job")
        return queryset.filter(job_id=job) if job else queryset


class DeadTaskReplayView(APIView):
    """Replay a job's dead tasks: all of them, or those listed in ``tasks``."""

    required_scope = "jobs"
    staff_permissions = {"POST": ("jobs.view_job", "jobs.change_task")}

    @extend_schema(
        request=ReplaySerializer,
        responses=inline_serializer("Replayed", {"replayed": serializers.IntegerField()}),
    )
    def post(self, request: Request) -> Response:
        body = ReplaySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        job = _job(request, body.validated_data["job"])
        replayed = services.dead_replay(job=job, task_ids=body.validated_data.get("tasks"))
        return Response({"replayed": replayed, "job": str(job.pk)})


# --- Server-Sent Events (an async view: daphne serves it) --------------------------------------


def _owned_job(ctx: KeyContext, job_id: str) -> Job | None:
    try:
        return Job.objects.filter(pk=job_id, tenant=ctx.tenant).first()
    except DjangoValidationError:  # not a UUID
        return None


async def _final_frames(job: Job) -> AsyncIterator[str]:
    """The job ended long ago and its stream expired: its summary from the database."""
    data = {"job": str(job.pk), **job.counts()}
    yield sse_frame(Event(id="0-0", event="progress", data=data))
    yield sse_frame(Event(id="0-1", event=END, data=data))


async def job_events(request: HttpRequest, job_id: str) -> HttpResponseBase:
    """``GET /v1/jobs/{id}/events``: the job's progress stream as Server-Sent Events, a
    long-lived response (a stream slot, the credential re-checked)."""
    try:
        ctx = await sync_to_async(authenticate_sse)(request, "jobs")
    except exceptions.APIException as exc:
        return refusal(request, exc)
    after, invalid = resume_after(request)
    if invalid is not None:
        return invalid
    job = await sync_to_async(_owned_job)(ctx, job_id)
    if job is None:
        return problem_response(404, slug="not-found", instance=request.path)
    try:
        hold = await hold_take_async(ctx.tenant, presented_credential(request))
    except TooManyStreams as exc:
        return refusal(request, exc)
    try:
        meta = await sync_to_async(get_log().meta)(job.stream_id)
        if meta is None and job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return LiveResponse(_final_frames(job), hold=hold, content_type="text/event-stream")
        if meta is None:
            await sync_to_async(stream_open)(job)
    except BaseException:
        await asyncio.to_thread(hold_release, hold)
        raise
    return event_response(request, job.stream_id, hold=hold, after=after)
