"""``/ws/v1/media/transcriptions``: a live transcription session (docs/media.md).

1. Authenticate like every socket (docs/streams.md): an ``X-API-Key``/``Authorization`` header
   on the handshake, or a first message ``{"type": "auth", "token": "<key or JWT>"}`` within
   ``WS_AUTH_TIMEOUT_SECONDS``. The key needs the ``infer`` scope; the socket holds one of the
   tenant's stream slots and is closed with 4401 when the key stops verifying (re-checked
   every ``WS_REAUTH_SECONDS``). ``?model=`` picks another transcription model than the
   built-in one.
2. The server starts a worker session and answers ``{"type": "ready", "stream", "format"}``.
3. The client sends binary frames of 16 kHz mono 16-bit little-endian PCM (any length up to
   ``WS_MAX_FRAME_BYTES``, whole samples) as the audio arrives; partial and final transcripts
   come back as ``{"type": "event", "id", "event": "chunk", "data": {"type": "partial"|"final",
   "text", …}}``.
4. ``{"type": "end"}``: no more audio; the last final and a ``result`` follow, then ``end`` and
   close 1000. ``{"type": "cancel"}`` stops the session at once.

Audio reaches the worker through an input stream in the stream log (the consumer appends, the
worker session reads), and results come back through the output stream, so the socket can be
served by any daphne process and the work by any worker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import Http404
from rest_framework import exceptions

from inference.engines.audio import SAMPLE_RATE, SAMPLE_WIDTH
from inference.media import services
from plumbing import untrusted
from plumbing.presence import NoWorker
from streaming import services as stream_services
from streaming.consumers import (
    CLOSE_AUTH_TIMEOUT,
    CLOSE_FORBIDDEN,
    CLOSE_NORMAL,
    CLOSE_NOT_FOUND,
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHENTICATED,
    MAX_BAD_FRAMES,
)
from streaming.credentials import Binding, bind_on_loop, unbind
from streaming.eventlog import END, GAP, StreamNotFound, get_log
from tenants.authentication import authenticate_credential
from tenants.selectors import KeyContext

log = logging.getLogger(__name__)

# Close codes of this socket beyond the shared ones (one table in docs/streams.md).
CLOSE_TOO_LONG = 4413  # more audio than MEDIA_MAX_AUDIO_SECONDS
CLOSE_INVALID = 4422  # the model named is not a transcription model
CLOSE_UNAVAILABLE = 4503  # no version can serve now (engine missing, queue full, no worker)
FORMAT = {"encoding": "pcm_s16le", "sample_rate": SAMPLE_RATE, "channels": 1}


class TranscriptionConsumer(AsyncWebsocketConsumer):
    ctx: KeyContext | None = None
    started: services.Started | None = None
    forwarder: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    lease: stream_services.Lease | None = None
    binding: Binding | None = None
    input_done = False
    finished = False
    bad_frames = 0
    audio_bytes = 0

    async def connect(self) -> None:
        await self.accept()
        headers = {k.decode().lower(): v.decode() for k, v in self.scope.get("headers", [])}
        raw = headers.get("x-api-key") or _bearer(headers.get("authorization", ""))
        if raw:
            await self.authenticate(raw)
        else:
            self.watchdog = asyncio.create_task(self._auth_deadline())

    async def _auth_deadline(self) -> None:
        await asyncio.sleep(settings.WS_AUTH_TIMEOUT_SECONDS)
        if self.ctx is None:
            await self.close(code=CLOSE_AUTH_TIMEOUT)

    def _model(self) -> str | None:
        from urllib.parse import parse_qs

        query = parse_qs(self.scope.get("query_string", b"").decode())
        return (query.get("model") or [None])[0] or None

    async def authenticate(self, raw: str) -> None:
        try:
            ctx = await database_sync_to_async(authenticate_credential)(raw)
        except exceptions.AuthenticationFailed:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not ctx.has_scope("infer"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.lease = await asyncio.to_thread(stream_services.stream_slot_take, ctx.tenant)
        if self.lease is None:
            await self.close(code=CLOSE_TOO_MANY)
            return
        self.ctx = ctx
        # Like every socket: closed with 4401 once the credential stops verifying.
        self.binding = bind_on_loop(raw, lambda: self.close(code=CLOSE_UNAUTHENTICATED))
        if self.watchdog is not None:
            self.watchdog.cancel()
        try:
            self.started = await database_sync_to_async(services.media_start)(
                kind="transcription",
                tenant=ctx.tenant,
                item={},
                model_name=self._model(),
                session=True,
            )
        except Http404:
            await self._refuse_start("not_found", "No such model.", CLOSE_NOT_FOUND)
            return
        except exceptions.ValidationError:
            await self._refuse_start("invalid", "Not a transcription model.", CLOSE_INVALID)
            return
        except exceptions.APIException as exc:
            code = "no-worker" if isinstance(exc, NoWorker) else "unavailable"
            await self._refuse_start(code, str(exc.detail), CLOSE_UNAVAILABLE)
            return
        self.forwarder = asyncio.create_task(self._forward(self.started.stream_id))
        await self.send_json(
            {
                "type": "ready",
                "stream": self.started.stream_id,
                "model": self.started.model,
                "version": self.started.version,
                "format": FORMAT,
                "max_frame_bytes": settings.WS_MAX_FRAME_BYTES,
                "max_seconds": settings.MEDIA_MAX_AUDIO_SECONDS,
            }
        )

    async def _refuse_start(self, code: str, message: str, close: int) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})
        await self.close(code=close)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_FRAME_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        if bytes_data is not None:
            await self.on_audio(bytes_data)
            return
        try:
            message = untrusted.loads(text_data or "")
        except (untrusted.Refused, untrusted.TooDeep) as exc:  # JSON, but not the API's
            await self.refuse("bad_message", str(exc))
            return
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        handler = getattr(self, f"on_{kind}", None) if isinstance(kind, str) else None
        if handler is None or kind == "audio":
            await self.refuse("bad_message", "Expected a JSON object with a known 'type'.")
            return
        await handler(message)

    async def refuse(self, code: str, message: str) -> None:
        self.bad_frames += 1
        await self.send_json({"type": "error", "code": code, "message": message})
        if self.bad_frames >= MAX_BAD_FRAMES:
            await self.close(code=CLOSE_PROTOCOL)

    async def on_auth(self, message: dict[str, Any]) -> None:
        token = message.get("token")
        if self.ctx is not None:
            await self.refuse("already_authenticated", "This socket is authenticated.")
        elif not isinstance(token, str) or not token:
            await self.close(code=CLOSE_UNAUTHENTICATED)
        else:
            await self.authenticate(token)

    async def on_audio(self, frame: bytes) -> None:
        if self.started is None or self.started.input_stream is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if self.input_done:
            await self.refuse("input_ended", "Audio after 'end' is ignored.")
            return
        if len(frame) % SAMPLE_WIDTH:
            await self.refuse("bad_audio_frame", "Frames must hold whole 16-bit samples.")
            return
        self.audio_bytes += len(frame)
        if self.audio_bytes > settings.MEDIA_MAX_AUDIO_SECONDS * SAMPLE_RATE * SAMPLE_WIDTH:
            await self.send_json(
                {
                    "type": "error",
                    "code": "audio_too_long",
                    "message": f"The limit is {settings.MEDIA_MAX_AUDIO_SECONDS:g} s of audio.",
                }
            )
            await self.close(code=CLOSE_TOO_LONG)
            return
        data = {"pcm": base64.b64encode(frame).decode()}
        await asyncio.to_thread(get_log().append, self.started.input_stream, "chunk", data)

    async def on_end(self, message: dict[str, Any]) -> None:
        if self.started is None or self.started.input_stream is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not self.input_done:
            self.input_done = True
            await asyncio.to_thread(get_log().close, self.started.input_stream)

    async def on_cancel(self, message: dict[str, Any]) -> None:
        if self.started is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await asyncio.to_thread(get_log().request_cancel, self.started.stream_id)
        await self.send_json({"type": "cancelling"})

    async def _forward(self, stream_id: str) -> None:
        stream_log = get_log()
        after: str | None = None
        while True:
            try:
                events = await asyncio.to_thread(
                    stream_log.read, stream_id, after, block_ms=1000, count=500
                )
            except StreamNotFound:
                await self.send_json({"type": "error", "code": "stream_expired"})
                await self.close(code=CLOSE_NOT_FOUND)
                return
            for event in events:
                await self.send_json({"type": "event", **event.envelope()})
                if event.event != GAP:
                    after = event.id
                if event.event == END:
                    self.finished = True
                    await self.close(code=CLOSE_NORMAL)
                    return

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def disconnect(self, code: int) -> None:
        for task in (self.forwarder, self.watchdog):
            if task is not None:
                task.cancel()
        if self.started is not None and not self.finished:
            # Nobody is listening any more: stop the worker's session.
            await asyncio.to_thread(_stop_session, self.started)
        if self.binding is not None:
            unbind(self.binding)
        if self.lease is not None:
            lease, self.lease = self.lease, None
            await asyncio.to_thread(stream_services.stream_slot_release, lease)


def _stop_session(started: services.Started) -> None:
    stream_log = get_log()
    try:
        stream_log.request_cancel(started.stream_id)
        if started.input_stream is not None:
            meta = stream_log.meta(started.input_stream)
            if meta is not None and not meta.closed:
                stream_log.close(started.input_stream)
    except StreamNotFound:
        pass
    except Exception:
        log.exception("could not stop transcription session %s", started.stream_id)


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
