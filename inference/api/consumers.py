"""Streaming inference over WebSocket: ``/ws/v1/models/<name>/infer``.

Protocol (JSON text frames; close codes in docs/streams.md), on top of the stream consumer's
authentication, frame checks and key re-checks:

1. Authenticate (``X-API-Key``/``Authorization`` header, or ``{"type": "auth", "token"}``
   first): the key needs the ``infer`` scope and a plan that allows the model. The server
   answers ``{"type": "ready", "model"}``.
2. ``{"type": "infer", "input": {...}}`` (or ``"inputs": [...]`` for an ``analysis``,
   ``"version"?``, ``"timeout_ms"?``): ``{"type": "started", "stream", "kind", "model",
   "version"}``, then the stream's events as ``{"type": "event", "id", "event", "data"}`` up to
   ``end``. The socket stays open for the next ``infer`` (one at a time).
3. ``{"type": "cancel"}``: the running inference stops (the worker sees the flag at its next
   token); its ``end`` event says ``"reason": "cancelled"``.

Closing the socket cancels a running inference. Refused input is an ``error`` message
(``invalid_input`` with the fields, ``busy``, ``queue-full``, …); the socket stays open.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.db import database_sync_to_async
from django.http import Http404
from rest_framework import exceptions

from inference.api.serializers import StreamInferRequestSerializer
from inference.catalog import selectors
from inference.models import Model
from inference.transport import streams
from streaming import fanout, flow, services
from streaming.consumers import (
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHENTICATED,
    StreamConsumer,
    _bearer,
    _redis_call,
)
from streaming.eventlog import END, StreamNotFound
from tenants.authentication import authenticate_credential


class InferConsumer(StreamConsumer):
    model: Model | None = None
    running: str | None = None  # the stream of the inference in progress

    async def connect(self) -> None:
        self.model_name = str(self.scope["url_route"]["kwargs"]["name"])
        self.stream_id = ""
        await self.accept()
        headers = {k.decode().lower(): v.decode() for k, v in self.scope.get("headers", [])}
        raw = headers.get("x-api-key") or _bearer(headers.get("authorization", ""))
        if raw:
            await self.authenticate(raw)
        else:
            self.watchdog = asyncio.create_task(self._auth_deadline())

    async def authenticate(self, raw: str) -> None:
        try:
            ctx = await database_sync_to_async(authenticate_credential)(raw)
        except exceptions.AuthenticationFailed:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not ctx.has_scope("infer"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        try:
            self.model = await database_sync_to_async(selectors.model_for_tenant)(
                self.model_name, ctx.tenant
            )
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)  # no such model, or not in the plan
            return
        self.lease = await _redis_call(services.stream_slot_take, ctx.tenant)
        if self.lease is None:
            await self.close(code=CLOSE_TOO_MANY)
            return
        self.ready(ctx, raw)  # revoked: closed with 4401 like a stream socket
        await self.send_json({"type": "ready", "model": self.model_name})

    async def on_subscribe(self, message: dict[str, Any]) -> None:
        await self.refuse("bad_message", "This socket runs inference: send 'infer'.")

    async def on_infer(self, message: dict[str, Any]) -> None:
        if self.ctx is None or self.model is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if self.running is not None:
            await self.send_json(
                {"type": "error", "code": "busy", "message": "One inference at a time."}
            )
            return
        body = StreamInferRequestSerializer(data={k: v for k, v in message.items() if k != "type"})
        if not body.is_valid():
            await self._invalid(body.errors)
            return
        data = body.validated_data
        if "inputs" in data:
            kind, items = streams.ANALYSIS, list(data["inputs"])
        else:
            kind = streams.TEXT if self.model.task == Model.Task.TEXT else streams.ANALYSIS
            items = [data["input"]]
        try:
            started = await database_sync_to_async(streams.stream_start)(
                model=self.model,
                tenant=self.ctx.tenant,
                kind=kind,
                items=items,
                version=data.get("version"),
                timeout_ms=data.get("timeout_ms"),
            )
        except exceptions.ValidationError as exc:
            await self._invalid(exc.detail)
            return
        except exceptions.APIException as exc:
            code = getattr(exc, "problem_slug", None) or exc.default_code
            error = {"type": "error", "code": str(code), "message": str(exc.detail)}
            if getattr(exc, "wait", None):  # what an HTTP answer's Retry-After would say
                error["retry_after"] = exc.wait  # type: ignore[attr-defined]
            await self.send_json(error)
            return
        self.running = started.stream_id
        await self.send_json(
            {
                "type": "started",
                "stream": started.stream_id,
                "kind": started.kind,
                "model": started.model,
                "version": started.version,
            }
        )
        self.forwarder = asyncio.create_task(self._forward_inference(started.stream_id))

    async def _invalid(self, detail: Any) -> None:
        await self.send_json({"type": "error", "code": "invalid_input", "errors": detail})

    async def _forward_inference(self, stream_id: str) -> None:
        # The process's one reader of the stream, pausing while the socket is backed up.
        try:
            async for batch in fanout.hub().follow(stream_id, None):
                for item in batch:
                    await flow.drain(self.scope)
                    await self.send(text_data=item.frame)
                    if item.event.event == END:
                        self.running = None
                        return
        except StreamNotFound:
            await self.send_json({"type": "error", "code": "stream_expired"})
        self.running = None

    async def on_cancel(self, message: dict[str, Any]) -> None:
        if self.ctx is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if self.running is None:
            await self.send_json(
                {"type": "error", "code": "not_running", "message": "No inference is running."}
            )
            return
        await asyncio.to_thread(streams.stream_cancel, self.running)
        await self.send_json({"type": "cancelling", "stream": self.running})

    async def disconnect(self, code: int) -> None:
        running, self.running = self.running, None
        if running is not None:
            # Nobody is reading any more: stop the work (off the event loop).
            await asyncio.to_thread(streams.stream_cancel, running)
        await super().disconnect(code)
