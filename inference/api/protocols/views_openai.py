"""OpenAI-compatible ``/v1/embeddings``, ``/v1/completions``, ``/v1/chat/completions``, so the
official ``openai`` client works unchanged (``base_url=.../v1``, ``api_key=<sluice key>``).

Models come from the same registry and every call goes through ``unary_flow.infer``. Errors stay
RFC 9457 problems with the ``error: {message, type, code}`` member the OpenAI clients read.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import connection
from django.http import Http404, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.api.views import caller_tenant, start_streaming
from inference.catalog import selectors
from inference.models import Model
from inference.transport import streams, unary_flow
from streaming.eventlog import Event
from streaming.responses import event_response

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}
_TYPES |= {404: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


class UnsupportedForModel(exceptions.APIException):
    status_code = 422
    default_code = "model_not_supported"
    problem_slug = "model-not-supported"


class OpenAIView(APIView):
    """Adds ``error: {message, type, code}`` to every problem body."""

    required_scope = "infer"
    staff_permissions = {"POST": ("inference.view_model",)}

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
        model = selectors.model_for_tenant(name, caller_tenant(request))
    except Http404 as exc:
        raise exceptions.NotFound(
            f"The model '{name}' does not exist (no {what} is registered under that name)."
        ) from exc
    if model.task != task:
        raise UnsupportedForModel(f"model {name} is a {model.task} model, not {what}")
    return model


def _run(model: Model, request: Request, rows: list[dict[str, Any]]) -> list[unary_flow.Answer]:
    tenant = caller_tenant(request)
    if len(rows) == 1:
        return [unary_flow.infer(model=model, tenant=tenant, data=rows[0])]

    def one(row: dict[str, Any]) -> unary_flow.Answer:
        try:
            return unary_flow.infer(model=model, tenant=tenant, data=row)
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
    max_completion_tokens = serializers.IntegerField(required=False, min_value=1, allow_null=True)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2, allow_null=True)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1, allow_null=True)
    stop = serializers.JSONField(required=False, allow_null=True)
    n = serializers.IntegerField(required=False, min_value=1, max_value=1, allow_null=True)
    stream = serializers.BooleanField(default=False, allow_null=True)
    stream_options = serializers.DictField(required=False, allow_null=True)
    user = serializers.CharField(required=False)

    def validate_stop(self, value: Any) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is None:
            return None
        if (
            not isinstance(stops, list)
            or len(stops) > 4
            or not all(isinstance(s, str) for s in stops)
        ):
            raise serializers.ValidationError("stop must be a string or a list of up to 4 strings")
        return [s for s in stops if s]


def _content(message: dict[str, Any]) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


class _TextView(OpenAIView):
    """Completions on a registered ``text`` model (the built-in ``textgen``, or any model on
    the ``transformers`` runtime): its input is ``{"prompt", "max_tokens"?, "temperature"?,
    "top_p"?, "stop"?, "messages"?}`` and its output ``{"text", "finish_reason"?,
    "prompt_tokens"?, "completion_tokens"?}``. ``stream: true`` answers Server-Sent Events in
    OpenAI's chunk format, produced by the worker token by token, ending with ``[DONE]``."""

    chat = False

    def _request(self, request: Request) -> tuple[Model, dict[str, Any], dict[str, Any]]:
        body = CompletionsRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        name = data["model"]
        model = _model_for_task(request, name, Model.Task.TEXT, "a text-generation model")
        row: dict[str, Any] = {}
        if self.chat:
            messages = data.get("messages") or []
            if not messages:
                raise exceptions.ValidationError({"messages": ["At least one message."]})
            plain = [{"role": str(m.get("role")), "content": _content(m)} for m in messages]
            # The model's chat template is used when its tokenizer has one; else this prompt.
            row["prompt"] = "".join(f"{m['role']}: {m['content']}\n" for m in plain)
            row["prompt"] += "assistant:"
            row["messages"] = plain
        else:
            prompt = data.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise exceptions.ValidationError({"prompt": ["A single string prompt."]})
            row["prompt"] = prompt
        tokens = data.get("max_completion_tokens") or data.get("max_tokens")
        if tokens:
            row["max_tokens"] = tokens
        for field in ("temperature", "top_p"):
            if data.get(field) is not None:
                row[field] = data[field]
        if data.get("stop"):
            row["stop"] = data["stop"]
        return model, row, data

    def _usage(self, row: dict[str, Any], output: dict[str, Any]) -> dict[str, int]:
        text = str(output.get("text", ""))
        prompt_tokens = int(output.get("prompt_tokens") or _tokens(row["prompt"]))
        completion_tokens = int(output.get("completion_tokens") or _tokens(text))
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def post(self, request: Request) -> HttpResponseBase:
        model, row, data = self._request(request)
        if data.get("stream"):
            return self._stream(request, model, row, data)
        answer = _run(model, request, [row])[0]
        text = str(answer.output.get("text", ""))
        finish = str(answer.output.get("finish_reason") or "stop")
        usage = self._usage(row, answer.output)
        created = int(time.time())
        if self.chat:
            body: dict[str, Any] = {
                "id": f"chatcmpl-{answer.request_id}",
                "object": "chat.completion",
                "created": created,
                "model": model.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            }
        else:
            body = {
                "id": f"cmpl-{answer.request_id}",
                "object": "text_completion",
                "created": created,
                "model": model.name,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                "usage": usage,
            }
        response = Response(body)
        response["X-Sluice-Version"] = answer.version
        return response

    def _stream(
        self, request: Request, model: Model, row: dict[str, Any], data: dict[str, Any]
    ) -> HttpResponseBase:
        started, hold, on_close = start_streaming(
            request._request,
            caller_tenant(request),
            model,
            kind=streams.CHAT if self.chat else streams.TEXT,
            items=[row],
        )
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        render = _ChunkRenderer(
            chat=self.chat,
            id=("chatcmpl-" if self.chat else "cmpl-") + started.stream_id,
            model=model.name,
            row=row,
            usage=self._usage if include_usage else None,
        )
        return event_response(
            request._request,
            started.stream_id,
            hold=hold,
            render=render,
            last="data: [DONE]\n\n",
            on_close=on_close,
            headers={"X-Sluice-Stream": started.stream_id, "X-Sluice-Version": started.version},
        )


class _ChunkRenderer:
    """Stream-log events as OpenAI stream chunks (``data: {...}`` lines, no ``event:``)."""

    def __init__(
        self,
        *,
        chat: bool,
        id: str,
        model: str,
        row: dict[str, Any],
        usage: Any,
    ) -> None:
        self.chat, self.id, self.model, self.row, self.usage = chat, id, model, row, usage
        self.created = int(time.time())
        self.started = False

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    def _choice(self, text: str | None, finish: str | None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if not self.started:
                delta["role"] = "assistant"
            return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

    def __call__(self, event: Event) -> str | None:
        if event.event == "token":
            out = self._chunk([self._choice(str(event.data.get("text", "")), None)])
            self.started = True
            return out
        if event.event == "result":
            output = event.data.get("output") or {}
            finish = str(output.get("finish_reason") or "stop")
            out = self._chunk([self._choice(None, finish)])
            self.started = True
            if self.usage is not None:
                out += self._chunk([], usage=self.usage(self.row, output))
            return out
        if event.event == "error":
            code = str(event.data.get("code", "inference_failed"))
            error = {
                "message": str(event.data.get("message") or code),
                "type": "server_error",
                "code": code,
                "param": None,
            }
            return f"data: {json.dumps({'error': error}, separators=(',', ':'))}\n\n"
        return None


class CompletionsView(_TextView):
    @extend_schema(
        operation_id="openai_completions",
        request=CompletionsRequest,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> HttpResponseBase:
        return super().post(request)


class ChatCompletionsView(_TextView):
    chat = True

    @extend_schema(
        operation_id="openai_chat_completions",
        request=CompletionsRequest,
        responses={200: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> HttpResponseBase:
        return super().post(request)
