"""``/v1/models``: the OpenAI-shaped model list and model, and unary inference."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference import selectors, serving
from inference.serializers import (
    InferRequestSerializer,
    InferResponseSerializer,
    ModelInfoSerializer,
    ModelListSerializer,
)
from tenants.models import Tenant
from tenants.selectors import KeyContext


def _tenant(request: Request) -> Tenant | None:
    """The caller's tenant; None for a staff session (which sees every model)."""
    return request.auth.tenant if isinstance(request.auth, KeyContext) else None


class ModelListView(APIView):
    """Models the caller's plan allows (OpenAI ``GET /v1/models`` shape)."""

    required_scope = "infer"

    @extend_schema(operation_id="models_list", responses=ModelListSerializer)
    def get(self, request: Request) -> Response:
        models = selectors.models_for_tenant(_tenant(request))
        return Response({"object": "list", "data": ModelInfoSerializer(models, many=True).data})


class ModelDetailView(APIView):
    required_scope = "infer"

    @extend_schema(operation_id="models_retrieve", responses=ModelInfoSerializer)
    def get(self, request: Request, name: str) -> Response:
        return Response(
            ModelInfoSerializer(selectors.model_for_tenant(name, _tenant(request))).data
        )


class InferView(APIView):
    """Run one input through the model. 422 names the wrong field, 503 (with Retry-After)
    when the queue is full or no version can serve, 504 when the deadline passes."""

    required_scope = "infer"

    @extend_schema(request=InferRequestSerializer, responses=InferResponseSerializer)
    def post(self, request: Request, name: str) -> Response:
        # The routing table, not the model row: no query while this process's copy is fresh.
        model = selectors.routing_table_for_tenant(name, _tenant(request))
        valid = InferRequestSerializer.fast(request.data)
        if valid is None:
            body = InferRequestSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            valid = body.validated_data
        answer = serving.infer(
            model=model,
            tenant=_tenant(request),
            data=valid["input"],
            version=valid.get("version"),
            timeout_ms=valid.get("timeout_ms"),
        )
        response = Response(
            {
                "id": answer.request_id,
                "object": "inference",
                "model": answer.model,
                "version": answer.version,
                "output": answer.output,
                "batch_size": answer.batch_size,
                "latency_ms": answer.latency_ms,
                "failed_over": answer.failed_over,
            }
        )
        response["X-Sluice-Version"] = answer.version
        return response
