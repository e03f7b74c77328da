"""``/v1/models``: the OpenAI-shaped model list and model, and unary inference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.api.serializers import (
    InferRequestSerializer,
    InferResponseSerializer,
    ModelInfoSerializer,
    ModelListSerializer,
    StreamInferRequestSerializer,
)
from inference.catalog import selectors
from inference.catalog.selectors import RoutingTable
from inference.models import Model
from inference.transport import streams, unary_flow
from streaming.responses import Hold, LiveResponse, event_response, hold_release, hold_take
from tenants.authentication import presented_credential
from tenants.models import Tenant
from tenants.selectors import KeyContext


def caller_tenant(request: Request) -> Tenant | None:
    """The caller's tenant; None for a staff session (which sees every model)."""
    return request.auth.tenant if isinstance(request.auth, KeyContext) else None


class ModelListView(APIView):
    """Models the caller's plan allows (OpenAI ``GET /v1/models`` shape)."""

    required_scope = "infer"
    staff_permissions = {"GET": ("inference.view_model",)}

    @extend_schema(operation_id="models_list", responses=ModelListSerializer)
    def get(self, request: Request) -> Response:
        tenant = caller_tenant(request)
        models = selectors.models_for_tenant(tenant)
        context = _state_context(models, tenant)
        data = ModelInfoSerializer(models, many=True, context=context).data
        return Response({"object": "list", "data": data})


class ModelDetailView(APIView):
    required_scope = "infer"
    staff_permissions = {"GET": ("inference.view_model",)}

    @extend_schema(operation_id="models_retrieve", responses=ModelInfoSerializer)
    def get(self, request: Request, name: str) -> Response:
        tenant = caller_tenant(request)
        model = selectors.model_for_tenant(name, tenant)
        context = _state_context([model], tenant)
        return Response(ModelInfoSerializer(model, context=context).data)


def _state_context(models: list[Model], tenant: Tenant | None) -> dict[str, Any]:
    """Every listed version's state, read at once; error texts for staff only."""
    versions = [v for model in models for v in model.versions.all()]
    return {"states": selectors.version_states(versions), "staff": tenant is None}


def wants_stream(request: Request) -> bool:
    return str(request.query_params.get("stream", "")).lower() in ("true", "1", "yes")


def start_streaming(
    request: HttpRequest,
    tenant: Tenant | None,
    model: Model | RoutingTable,
    *,
    kind: str,
    items: list[dict],
    version: str | None = None,
    timeout_ms: int | None = None,
) -> tuple[streams.Started, Hold, Callable[[bool], None]]:
    """Take one of the tenant's stream slots (429 when all are in use) and start the stream;
    return it with what the answer (:func:`streaming.responses.event_response`) holds — the
    slot and the request's credential — and its ``on_close``, which cancels the producing
    work when the client left before the end. ``tenant``: None for a staff session (no
    slots)."""
    hold = hold_take(tenant, presented_credential(request))
    try:
        started = streams.stream_start(
            model=model,
            tenant=tenant,
            kind=kind,
            items=items,
            version=version,
            timeout_ms=timeout_ms,
        )
    except BaseException:
        hold_release(hold)
        raise

    def on_close(abandoned: bool) -> None:
        if abandoned:
            streams.stream_cancel(started.stream_id)

    return started, hold, on_close


class InferView(APIView):
    """Run one input through the model. 422 names the wrong field, 503 (with Retry-After)
    when the queue is full or no version can serve, 504 when the deadline passes.

    With ``?stream=true`` the answer is Server-Sent Events produced by the worker as it
    computes: ``token`` events of a text model, ``result`` per item of ``inputs``, then
    ``end`` (docs/streams.md). Closing the connection cancels the work."""

    required_scope = "infer"
    # A staff session may try a model it may see (the browsable API); no tenant, no quota.
    staff_permissions = {"POST": ("inference.view_model",)}

    @extend_schema(
        request=InferRequestSerializer,
        responses={
            200: OpenApiResponse(
                InferResponseSerializer,
                description="The answer; with ?stream=true a text/event-stream instead.",
            )
        },
        parameters=[
            OpenApiParameter(
                "stream",
                OpenApiTypes.BOOL,
                description="Answer with Server-Sent Events (body: input, or inputs: [...]).",
            )
        ],
    )
    def post(self, request: Request, name: str) -> HttpResponseBase:
        # The routing table, not the model row: no query while this process's copy is fresh.
        model = selectors.routing_table_for_tenant(name, caller_tenant(request))
        if wants_stream(request):
            return self._stream(request, model)
        valid = InferRequestSerializer.fast(request.data)
        if valid is None:
            body = InferRequestSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            valid = body.validated_data
        answer = unary_flow.infer(
            model=model,
            tenant=caller_tenant(request),
            data=valid["input"],
            version=valid.get("version"),
            timeout_ms=valid.get("timeout_ms"),
        )
        response = Response(answer.body())
        response["X-Sluice-Version"] = answer.version
        return response

    def _stream(self, request: Request, model: RoutingTable) -> HttpResponseBase:
        body = StreamInferRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return stream_answer(request._request, caller_tenant(request), model, body.validated_data)


def stream_answer(
    request: HttpRequest, tenant: Tenant | None, model: RoutingTable, data: dict[str, Any]
) -> LiveResponse:
    """Start the stream of a validated ``?stream=true`` body and answer with its events
    (the view's answer)."""
    if "inputs" in data:
        kind, items = streams.ANALYSIS, list(data["inputs"])
    else:
        kind = streams.TEXT if model.task == Model.Task.TEXT else streams.ANALYSIS
        items = [data["input"]]
    started, hold, on_close = start_streaming(
        request,
        tenant,
        model,
        kind=kind,
        items=items,
        version=data.get("version"),
        timeout_ms=data.get("timeout_ms"),
    )
    return event_response(
        request,
        started.stream_id,
        hold=hold,
        on_close=on_close,
        headers={
            "X-Sluice-Stream": started.stream_id,
            "X-Sluice-Version": started.version,
            "X-Sluice-Stream-Kind": started.kind,
        },
    )
