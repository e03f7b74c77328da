"""WebSocket delivery of a stream: ``/ws/v1/streams/<stream_id>``.

Protocol (JSON text frames; close codes in docs/streams.md):

1. Authenticate: an ``X-API-Key``/``Authorization`` header on the handshake, or a first message
   ``{"type": "auth", "token": "<key or JWT>"}`` within ``WS_AUTH_TIMEOUT_SECONDS`` (browsers
   cannot set headers; the query string would end up in access logs).
2. ``{"type": "subscribe", "after": "<id>" | null}``: events arrive as envelopes
   ``{"type": "event", "id", "event", "data"}``; after ``end`` the server closes with 1000.
3. ``{"type": "cancel"}``: asks the producer to stop (it polls the stream's cancel flag).

The key is checked again every ``WS_REAUTH_SECONDS`` (streaming.credentials): a socket whose
key is revoked or expires, or whose tenant is deactivated, closes with 4401.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from rest_framework import exceptions

from plumbing import untrusted
from streaming import fanout, flow, services
from streaming.access import staff_may_read
from streaming.credentials import Binding, bind_on_loop, unbind
from streaming.eventlog import END, StreamNotFound, get_log, valid_id
from tenants.authentication import authenticate_credential
from tenants.selectors import KeyContext

T = TypeVar("T")

# Close codes (one table in docs/streams.md).
CLOSE_NORMAL = 1000
# daphne refuses messages over WS_MAX_FRAME_BYTES itself with 1009 (it is started with that
# limit); the consumer's own check only fires behind a server started without it, and then uses
# 4009, since the protocol layer lets an application send only 1000 and 3000-4999.
CLOSE_TOO_BIG = 4009
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_TOO_MANY = 4429
MAX_BAD_FRAMES = 3


class StreamConsumer(AsyncWebsocketConsumer):
    # Events come from the stream log, never the channel layer: no channel per socket.
    channel_layer_alias = "__none__"
    ctx: KeyContext | None = None
    forwarder: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    lease: services.Lease | None = None
    binding: Binding | None = None
    bad_frames = 0
    operator = False

    async def connect(self) -> None:
        self.stream_id = str(self.scope["url_route"]["kwargs"]["stream_id"])
        await self.accept()
        headers = {k.decode().lower(): v.decode() for k, v in self.scope.get("headers", [])}
        raw = headers.get("x-api-key") or _bearer(headers.get("authorization", ""))
        if raw:
            await self.authenticate(raw)
        elif await self._staff():
            await self.send_json({"type": "ready", "stream": self.stream_id})
        else:
            self.watchdog = asyncio.create_task(self._auth_deadline())

    async def _staff(self) -> bool:
        """An admin session (browser, same origin): an operator follows platform streams, and
        a tenant's stream with the permissions to read it (streaming.access); no tenant slot."""
        user = self.scope.get("user")
        if user is None or not (user.is_active and user.is_staff):
            return False
        meta = await _redis_call(get_log().meta, self.stream_id)
        if meta is None:
            await self.close(code=CLOSE_NOT_FOUND)
        elif not await database_sync_to_async(staff_may_read)(user, meta):
            await self.close(code=CLOSE_FORBIDDEN)
        else:
            self.operator = True
        return True

    @property
    def authenticated(self) -> bool:
        return self.ctx is not None or self.operator

    async def _auth_deadline(self) -> None:
        await asyncio.sleep(settings.WS_AUTH_TIMEOUT_SECONDS)
        if not self.authenticated:
            await self.close(code=CLOSE_AUTH_TIMEOUT)

    async def authenticate(self, raw: str) -> None:
        try:
            ctx = await database_sync_to_async(authenticate_credential)(raw)
        except exceptions.AuthenticationFailed:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not ctx.has_scope("streams"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        meta = await _redis_call(get_log().meta, self.stream_id)
        if meta is None or meta.tenant_id != ctx.tenant.pk:
            await self.close(code=CLOSE_NOT_FOUND)  # another tenant's stream does not exist
            return
        self.lease = await _redis_call(services.stream_slot_take, ctx.tenant)
        if self.lease is None:
            await self.close(code=CLOSE_TOO_MANY)
            return
        self.ready(ctx, raw)
        await self.send_json({"type": "ready", "stream": self.stream_id})

    def ready(self, ctx: KeyContext, raw: str) -> None:
        """Authenticated: the socket is bound to its credential (closed with 4401 when that
        stops verifying) and the authentication deadline is off."""
        self.ctx = ctx
        self.binding = bind_on_loop(raw, lambda: self.close(code=CLOSE_UNAUTHENTICATED))
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_FRAME_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        try:
            message = untrusted.loads(text_data if text_data is not None else (bytes_data or b""))
        except (untrusted.Refused, untrusted.TooDeep) as exc:  # JSON, but not the API's
            await self.refuse("bad_message", str(exc))
            return
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        handler = getattr(self, f"on_{kind}", None) if isinstance(kind, str) else None
        if handler is None:
            await self.refuse("bad_message", "Expected a JSON object with a known 'type'.")
            return
        await handler(message)

    async def refuse(self, code: str, message: str) -> None:
        """An error event; the connection stays open until the client keeps sending garbage."""
        self.bad_frames += 1
        await self.send_json({"type": "error", "code": code, "message": message})
        if self.bad_frames >= MAX_BAD_FRAMES:
            await self.close(code=CLOSE_PROTOCOL)

    async def on_auth(self, message: dict[str, Any]) -> None:
        token = message.get("token")
        if self.authenticated:
            await self.refuse("already_authenticated", "This socket is authenticated.")
        elif not isinstance(token, str) or not token:
            await self.close(code=CLOSE_UNAUTHENTICATED)
        else:
            await self.authenticate(token)

    async def on_subscribe(self, message: dict[str, Any]) -> None:
        after = message.get("after")
        if not self.authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
        elif after is not None and (not isinstance(after, str) or not valid_id(after)):
            await self.refuse("bad_resume_id", "'after' must be a stream id or null.")
        elif self.forwarder is not None:
            await self.refuse("already_subscribed", "This socket is already subscribed.")
        else:
            self.forwarder = asyncio.create_task(self._forward(after))

    async def on_cancel(self, message: dict[str, Any]) -> None:
        if not self.authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await _redis_call(get_log().request_cancel, self.stream_id)
        await self.send_json({"type": "cancelling"})

    async def _forward(self, after: str | None) -> None:
        # One reader per stream per process (fanout); before each frame, wait while the
        # socket's write buffer is over the high-water mark (flow), so a slow client costs a
        # position in the log, not a growing buffer.
        try:
            async for batch in fanout.hub().follow(self.stream_id, after):
                for item in batch:
                    await flow.drain(self.scope)
                    await self.send(text_data=item.frame)
                    if item.event.event == END:
                        break
        except StreamNotFound:
            await self.send_json({"type": "error", "code": "stream_expired"})
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.close(code=CLOSE_NORMAL)

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def disconnect(self, code: int) -> None:
        for task in (self.forwarder, self.watchdog):
            if task is not None:
                task.cancel()
        if self.lease is not None:
            lease, self.lease = self.lease, None
            await _redis_call(services.stream_slot_release, lease)
        if self.binding is not None:
            unbind(self.binding)


async def _redis_call(fn: Callable[..., T], *args: Any) -> T:
    """A blocking Redis (or in-memory) call off the event loop, in parallel with others: not
    on the one thread Django's database calls share."""
    return await sync_to_async(fn, thread_sensitive=False)(*args)


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
