"""WebSocket delivery of a stream: ``/ws/v1/streams/<stream_id>``.

Protocol (JSON text frames; close codes in docs/streams.md), on top of the authentication and
frame checks every socket shares (streaming.sockets):

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
from typing import Any, ClassVar

from channels.db import database_sync_to_async

from streaming import fanout, flow
from streaming.access import staff_may_read
from streaming.eventlog import END, StreamNotFound, get_log, valid_id
from streaming.sockets import (
    CLOSE_FORBIDDEN,
    CLOSE_NORMAL,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHENTICATED,
    AuthenticatedSocket,
    redis_call,
)
from tenants.selectors import KeyContext


class StreamConsumer(AuthenticatedSocket):
    key_scope: ClassVar[str] = "streams"
    operator = False

    async def connect(self) -> None:
        self.stream_id = str(self.scope["url_route"]["kwargs"]["stream_id"])
        await super().connect()

    async def authenticate_session(self) -> bool:
        """An admin session (browser, same origin): an operator follows platform streams, and
        a tenant's stream with the permissions to read it (streaming.access); no tenant slot."""
        user = self.scope.get("user")
        if user is None or not (user.is_active and user.is_staff):
            return False
        meta = await redis_call(get_log().meta, self.stream_id)
        if meta is None:
            await self.close(code=CLOSE_NOT_FOUND)
        elif not await database_sync_to_async(staff_may_read)(user, meta):
            await self.close(code=CLOSE_FORBIDDEN)
        else:
            self.operator = True
            await self.send_json({"type": "ready", "stream": self.stream_id})
        return True

    @property
    def authenticated(self) -> bool:
        return self.ctx is not None or self.operator

    async def admit(self, ctx: KeyContext) -> bool:
        meta = await redis_call(get_log().meta, self.stream_id)
        if meta is None or meta.tenant_id != ctx.tenant.pk:
            await self.close(code=CLOSE_NOT_FOUND)  # another tenant's stream does not exist
            return False
        return True

    async def begin(self) -> None:
        await self.send_json({"type": "ready", "stream": self.stream_id})

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
        await redis_call(get_log().request_cancel, self.stream_id)
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
