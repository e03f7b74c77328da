"""``/v2/...``: KServe Open Inference Protocol v2 over HTTP/JSON, so ``tritonclient.http`` and
KServe clients work unchanged. Every inference goes through ``unary_flow.infer`` (router, queue
bound, deadline, batcher), one call per batch row.

Errors stay RFC 9457 problems (``application/problem+json``) with the protocol's ``error``
member added: tritonclient reads only ``error`` and does not check the content type.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import connection
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.api.protocols import v2
from inference.api.views import caller_tenant
from inference.catalog import selectors
from inference.models import Model, ModelVersion
from inference.transport import unary_flow
from plumbing.untrusted import JSONParser

SERVER = {"name": "sluice", "version": "1", "extensions": []}


class _JSONWhateverTheType(DefaultContentNegotiation):
    """tritonclient sends its JSON body without a Content-Type: parse it as JSON anyway."""

    def select_parser(self, request: Request, parsers: Any) -> Any:
        if request.META.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"):
            raise v2.ProtocolError(
                "binary tensor data is not supported; send JSON tensors (binary_data=False)"
            )
        return JSONParser()


class V2View(APIView):
    """Adds the protocol's ``{"error": "..."}`` member to every problem body."""

    content_negotiation_class = _JSONWhateverTheType
    staff_permissions = {
        "GET": ("inference.view_model",),
        "POST": ("inference.view_model",),
    }

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(response.data, dict):
            response.data["error"] = str(
                response.data.get("detail") or response.data.get("title") or exc
            )
            errors = response.data.get("errors")
            if isinstance(errors, list) and errors:
                response.data["error"] = "; ".join(
                    f"{e.get('field')}: {e.get('detail')}" for e in errors
                )
        return response


class LiveView(V2View):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="v2_health_live", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        return Response({"live": True})


class ReadyView(V2View):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="v2_health_ready", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        connection.ensure_connection()  # a database error answers 500/503 as a problem
        return Response({"ready": True})


class ServerMetadataView(V2View):
    required_scope = "infer"

    @extend_schema(operation_id="v2_server_metadata", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        return Response(SERVER)


def _model(request: Request, name: str) -> Model:
    try:
        return selectors.model_for_tenant(name, caller_tenant(request))
    except Http404 as exc:
        raise NotFound(f"Unknown model '{name}'.") from exc


def _serving_version(model: Model, version: str | None) -> ModelVersion:
    """The version a request names, else the active one (whose schema describes the model)."""
    versions = list(model.versions.all())
    if version is not None:
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise v2.ProtocolError(f"model {model.name} has no version {version!r}")
    active = [v for v in versions if v.state == ModelVersion.State.ACTIVE]
    if not active:
        raise unary_flow.ModelUnavailable(f"model {model.name} has no active version")
    return active[0]


class ModelMetadataView(V2View):
    required_scope = "infer"

    @extend_schema(operation_id="v2_model_metadata", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, name: str, version: str | None = None) -> Response:
        model = _model(request, name)
        chosen = _serving_version(model, version)
        outputs = chosen.runtime_options.get("outputs") or []
        types = chosen.runtime_options.get("output_datatypes") or {}
        return Response(
            {
                "name": model.name,
                "versions": [v.version for v in model.versions.all()],
                "platform": f"sluice_{chosen.runtime}",
                "inputs": v2.tensor_specs(chosen.input_schema),
                "outputs": [
                    {"name": str(o), "datatype": types.get(str(o), "FP32"), "shape": [-1]}
                    for o in outputs
                ],
            }
        )


class ModelReadyView(V2View):
    required_scope = "infer"

    @extend_schema(operation_id="v2_model_ready", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, name: str, version: str | None = None) -> Response:
        model = _model(request, name)
        chosen = _serving_version(model, version)
        reason = selectors.version_unavailable(chosen)
        if chosen.state != ModelVersion.State.ACTIVE or reason:
            raise unary_flow.ModelUnavailable(reason or f"{model.name}:{chosen.version} not active")
        return Response({"name": model.name, "ready": True})


class InferV2View(V2View):
    """A v2 inference request; each batch row is one ``unary_flow.infer`` call, sent together so
    the worker's batcher can merge them."""

    required_scope = "infer"

    @extend_schema(
        operation_id="v2_model_infer",
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request, name: str, version: str | None = None) -> Response:
        tenant = caller_tenant(request)
        model = _model(request, name)
        chosen = _serving_version(model, version)
        rows = v2.decode_request(chosen.input_schema, request.data)
        requested = [
            str(o.get("name")) for o in request.data.get("outputs") or [] if isinstance(o, dict)
        ]

        def one(row: dict[str, Any]) -> unary_flow.Answer:
            try:
                return unary_flow.infer(model=model, tenant=tenant, data=row, version=version)
            finally:
                connection.close()  # a pool thread must not keep a database connection

        if len(rows) == 1:
            answers = [unary_flow.infer(model=model, tenant=tenant, data=rows[0], version=version)]
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(rows))) as pool:
                answers = list(pool.map(one, rows))
        body: dict[str, Any] = {
            "model_name": model.name,
            "model_version": answers[0].version if answers else chosen.version,
            "outputs": v2.encode_outputs([a.output for a in answers], requested or None),
        }
        if "id" in request.data:
            body["id"] = str(request.data["id"])
        response = Response(body)
        if answers:
            response["X-Sluice-Version"] = answers[0].version
        return response


# The same views under /versions/{version}/, with their own OpenAPI operation ids.


class VersionMetadataView(ModelMetadataView):
    @extend_schema(operation_id="v2_version_metadata", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, name: str, version: str | None = None) -> Response:
        return super().get(request, name, version)


class VersionReadyView(ModelReadyView):
    @extend_schema(operation_id="v2_version_ready", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, name: str, version: str | None = None) -> Response:
        return super().get(request, name, version)


class VersionInferView(InferV2View):
    @extend_schema(
        operation_id="v2_version_infer",
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request, name: str, version: str | None = None) -> Response:
        return super().post(request, name, version)
