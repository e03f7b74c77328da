"""The one WebSocket base every Sluice socket subclasses: authentication (a handshake header or
a first ``{"type": "auth", "token"}`` message within ``WS_AUTH_TIMEOUT_SECONDS``), the scope
check, one of the tenant's stream slots, the key re-check that closes with 4401, frame size and
JSON checks, and ``{"type": ...}`` messages dispatched to ``on_<type>`` handlers.

A subclass names the key scope it needs, may refuse a credential in ``admit`` (closing the
socket itself) and greets the client in ``begin``. Close codes: one table in docs/streams.md.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from rest_framework import exceptions

from plumbing import untrusted
from streaming import services
from streaming.credentials import Binding, bind_on_loop, unbind
from tenants.authentication import authenticate_credential
from tenants.selectors import KeyContext

T = TypeVar("T")

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


class AuthenticatedSocket(AsyncWebsocketConsumer):
    """A JSON socket that authenticates first; see the module docstring for the hooks."""

    # Events come from the stream log, never the channel layer: no channel per socket.
    channel_layer_alias = "__none__"
    key_scope: ClassVar[str]  # the API key scope the socket needs ("streams", "infer")
    ctx: KeyContext | None = None
    forwarder: asyncio.Task[None] | None = None  # the task that sends the stream's events
    watchdog: asyncio.Task[None] | None = None
    lease: services.Lease | None = None
    binding: Binding | None = None
    bad_frames = 0

    async def connect(self) -> None:
        await self.accept()
        headers = {k.decode().lower(): v.decode() for k, v in self.scope.get("headers", [])}
        raw = headers.get("x-api-key") or bearer_token(headers.get("authorization", ""))
        if raw:
            await self.authenticate(raw)
        elif not await self.authenticate_session():
            self.watchdog = asyncio.create_task(self._auth_deadline())

    async def authenticate_session(self) -> bool:
        """Whether the handshake's session authenticates the socket (by default it never
        does); a subclass that takes sessions answers the client or closes the socket."""
        return False

    @property
    def authenticated(self) -> bool:
        return self.ctx is not None

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
        if not ctx.has_scope(self.key_scope):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if not await self.admit(ctx):
            return
        self.lease = await redis_call(services.stream_slot_take, ctx.tenant)
        if self.lease is None:
            await self.close(code=CLOSE_TOO_MANY)
            return
        self.ctx = ctx
        # Bound to its credential: closed with 4401 once that stops verifying.
        self.binding = bind_on_loop(raw, lambda: self.close(code=CLOSE_UNAUTHENTICATED))
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        await self.begin()

    async def admit(self, ctx: KeyContext) -> bool:
        """Whether this tenant may open this socket; a subclass that refuses closes it."""
        return True

    async def begin(self) -> None:
        """Authenticated and holding a stream slot: greet the client."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.WS_MAX_FRAME_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        if bytes_data is not None and await self.receive_binary(bytes_data):
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

    async def receive_binary(self, data: bytes) -> bool:
        """Whether the subclass took a binary frame as data; by default it is read as JSON."""
        return False

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

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def disconnect(self, code: int) -> None:
        for task in (self.forwarder, self.watchdog):
            if task is not None:
                task.cancel()
        if self.lease is not None:
            lease, self.lease = self.lease, None
            await redis_call(services.stream_slot_release, lease)
        if self.binding is not None:
            unbind(self.binding)


async def redis_call(fn: Callable[..., T], *args: Any) -> T:
    """A blocking Redis (or in-memory) call off the event loop, in parallel with others: not
    on the one thread Django's database calls share."""
    return await sync_to_async(fn, thread_sensitive=False)(*args)


def bearer_token(value: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
