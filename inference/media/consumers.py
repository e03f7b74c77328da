"""``/ws/v1/media/transcriptions``: a live transcription session (docs/media.md).

1. Authenticate like every socket (streaming.sockets, docs/streams.md): an ``X-API-Key``/
   ``Authorization`` header on the handshake, or a first message ``{"type": "auth", "token":
   "<key or JWT>"}`` within ``WS_AUTH_TIMEOUT_SECONDS``. The key needs the ``infer`` scope; the
   socket holds one of the tenant's stream slots and is closed with 4401 when the key stops
   verifying (re-checked every ``WS_REAUTH_SECONDS``). ``?model=`` picks another transcription
   model than the built-in one.
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
import logging
from typing import Any, ClassVar
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import Http404
from rest_framework import exceptions

from inference.engines.audio import SAMPLE_RATE, SAMPLE_WIDTH
from inference.media import services
from plumbing.presence import NoWorker
from streaming.eventlog import END, GAP, StreamNotFound, get_log
from streaming.sockets import (
    CLOSE_NORMAL,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    AuthenticatedSocket,
)

log = logging.getLogger(__name__)

# Close codes of this socket beyond the shared ones (one table in docs/streams.md).
CLOSE_TOO_LONG = 4413  # more audio than MEDIA_MAX_AUDIO_SECONDS
CLOSE_INVALID = 4422  # the model named is not a transcription model
CLOSE_UNAVAILABLE = 4503  # no version can serve now (engine missing, queue full, no worker)
FORMAT = {"encoding": "pcm_s16le", "sample_rate": SAMPLE_RATE, "channels": 1}


class TranscriptionConsumer(AuthenticatedSocket):
    key_scope: ClassVar[str] = "infer"
    started: services.Started | None = None
    input_done = False
    finished = False
    audio_bytes = 0

    def _model(self) -> str | None:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        return (query.get("model") or [None])[0] or None

    async def begin(self) -> None:
        assert self.ctx is not None
        try:
            self.started = await database_sync_to_async(services.media_start)(
                kind="transcription",
                tenant=self.ctx.tenant,
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

    async def receive_binary(self, data: bytes) -> bool:
        await self.audio(data)
        return True

    async def audio(self, frame: bytes) -> None:
        """A binary frame of PCM (not an ``on_`` handler: audio never comes as a JSON type)."""
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

    async def disconnect(self, code: int) -> None:
        if self.forwarder is not None:
            self.forwarder.cancel()
        if self.started is not None and not self.finished:
            # Nobody is listening any more: stop the worker's session.
            await asyncio.to_thread(_stop_session, self.started)
        await super().disconnect(code)


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
