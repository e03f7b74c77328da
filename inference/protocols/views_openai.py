"""OpenAI-compatible ``/v1/embeddings``, ``/v1/completions``, ``/v1/chat/completions``, so the
official ``openai`` client works unchanged (``base_url=.../v1``, ``api_key=<sluice key>``).

Models come from the same registry and every call goes through ``serving.infer``. Errors stay
RFC 9457 problems with the ``error: {message, type, code}`` member the OpenAI clients read.
"""

from __future__ import annotations

import base64
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import connection
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference import selectors, serving
from inference.models import Model
from inference.views import _tenant

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}
_TYPES |= {404: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


class UnsupportedForModel(exceptions.APIException):
    status_code = 422
    default_code = "model_not_supported"
    problem_slug = "model-not-supported"


class StreamingNotSupported(exceptions.APIException):
    status_code = 422
    default_code = "streaming_not_supported"
    problem_slug = "streaming-not-supported"
    default_detail = (
        "stream=true is not supported yet: server-sent events arrive with the streaming work. "
        "Send stream=false (the default)."
    )


class OpenAIView(APIView):
    """Adds ``error: {message, type, code}`` to every problem body."""

    required_scope = "infer"

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if isinstance(response.data, dict):
            message = response.data.get("detail") or response.data.get("title") or str(exc)
            errors = response.data.get("errors")
            if isinstance(errors, list) and errors:
                message = "; ".join(f"{e.get('field')}: {e.get('detail')}" for e in errors)
            code = getattr(exc, "default_code", None)
            response.data["error"] = {
                "message": str(message),
                "type": _TYPES.get(response.status_code, "server_error"),
                "code": str(code) if code else None,
                "param": None,
            }
        return response


class EmbeddingsRequest(serializers.Serializer):
    model = serializers.CharField()
    input = serializers.JSONField()
    encoding_format = serializers.ChoiceField(["float", "base64"], default="float")
    user = serializers.CharField(required=False)
    dimensions = serializers.IntegerField(required=False, min_value=1)

    def validate_input(self, value: Any) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(t, str) and t for t in texts)
        ):
            raise serializers.ValidationError(
                "input must be a non-empty string or a non-empty list of non-empty strings "
                "(token arrays are not supported)"
            )
        if len(texts) > 256:
            raise serializers.ValidationError("at most 256 inputs per request")
        return texts


def _model_for_task(request: Request, name: str, task: str, what: str) -> Model:
    try:
        model = selectors.model_for_tenant(name, _tenant(request))
    except Http404 as exc:
        raise exceptions.NotFound(
            f"The model '{name}' does not exist (no {what} is registered under that name)."
        ) from exc
    if model.task != task:
        raise UnsupportedForModel(f"model {name} is a {model.task} model, not {what}")
    return model


def _run(model: Model, request: Request, rows: list[dict[str, Any]]) -> list[serving.Answer]:
    tenant = _tenant(request)
    if len(rows) == 1:
        return [serving.infer(model=model, tenant=tenant, data=rows[0])]

    def one(row: dict[str, Any]) -> serving.Answer:
        try:
            return serving.infer(model=model, tenant=tenant, data=row)
        finally:
            connection.close()  # a pool thread must not keep a database connection

    # Sent together so the worker's batcher can merge them into one forward pass.
    with ThreadPoolExecutor(max_workers=min(8, len(rows))) as pool:
        return list(pool.map(one, rows))


def _tokens(text: str) -> int:
    return len(text.split())


class EmbeddingsView(OpenAIView):
    """Embeddings from a registered ``embedding`` model (the built-in one is ``embeddings``)."""

    @extend_schema(
        operation_id="openai_embeddings",
        request=EmbeddingsRequest,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> Response:
        body = EmbeddingsRequest(data=request.data)
        body.is_valid(raise_exception=True)
        name = body.validated_data["model"]
        model = _model_for_task(request, name, Model.Task.EMBEDDING, "an embedding model")
        texts = body.validated_data["input"]
        answers = _run(model, request, [{"text": t} for t in texts])
        data = []
        for index, answer in enumerate(answers):
            vector = [float(x) for x in answer.output["embedding"]]
            if body.validated_data.get("dimensions"):
                vector = vector[: body.validated_data["dimensions"]]
            embedding: Any = vector
            if body.validated_data["encoding_format"] == "base64":
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = base64.b64encode(packed).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_tokens(t) for t in texts)
        response = Response(
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
        response["X-Sluice-Version"] = answers[0].version
        return response


class CompletionsRequest(serializers.Serializer):
    model = serializers.CharField()
    prompt = serializers.JSONField(required=False)
    messages = serializers.ListField(child=serializers.DictField(), required=False)
    max_tokens = serializers.IntegerField(required=False, min_value=1, allow_null=True)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    stream = serializers.BooleanField(default=False)


class _TextView(OpenAIView):
    """Completions need a registered ``text`` model whose handler maps ``{"prompt",
    "max_tokens"}`` to ``{"text"}``; none is built in yet, so these answer 404 (no such model)
    or 422 (a model that is not a text-generation model) until one is registered."""

    chat = False

    def _generate(self, request: Request) -> tuple[Model, serving.Answer, str, dict[str, Any]]:
        body = CompletionsRequest(data=request.data)
        body.is_valid(raise_exception=True)
        if body.validated_data["stream"]:
            raise StreamingNotSupported()
        name = body.validated_data["model"]
        model = _model_for_task(request, name, Model.Task.TEXT, "a text-generation model")
        if self.chat:
            messages = body.validated_data.get("messages") or []
            if not messages:
                raise exceptions.ValidationError({"messages": ["At least one message."]})
            prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)
            prompt += "\nassistant:"
        else:
            prompt = body.validated_data.get("prompt")
            if not isinstance(prompt, str):
                raise exceptions.ValidationError({"prompt": ["A single string prompt."]})
        row: dict[str, Any] = {"prompt": prompt}
        if body.validated_data.get("max_tokens"):
            row["max_tokens"] = body.validated_data["max_tokens"]
        answer = _run(model, request, [row])[0]
        text = str(answer.output.get("text", ""))
        usage = {
            "prompt_tokens": _tokens(prompt),
            "completion_tokens": _tokens(text),
            "total_tokens": _tokens(prompt) + _tokens(text),
        }
        return model, answer, text, usage


class CompletionsView(_TextView):
    @extend_schema(
        operation_id="openai_completions",
        request=CompletionsRequest,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> Response:
        model, answer, text, usage = self._generate(request)
        return Response(
            {
                "id": f"cmpl-{answer.request_id}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model.name,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": usage,
            }
        )


class ChatCompletionsView(_TextView):
    chat = True

    @extend_schema(
        operation_id="openai_chat_completions",
        request=CompletionsRequest,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> Response:
        model, answer, text, usage = self._generate(request)
        return Response(
            {
                "id": f"chatcmpl-{answer.request_id}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
