"""Django's ASGI handler, closing at once what a client that disconnected leaves behind.

On a disconnect Django's handler cancels the request's task. Two things outlive the client:

- An answer a sync view was still making. Its thread cannot be stopped, and the handler
  drops the response it returns without closing it — a stream slot taken and a stream's
  work started for nobody, running to its deadline. Here the answer is awaited through a
  shield and closed when it comes (an async view is still cancelled at once).
- A streaming body the disconnect caught while the handler was sending. The handler closes
  only its own wrapper of the body, so the body's ``finally`` — give the slot back, cancel the
  work — waits for garbage collection. Here a body with an ``aclose`` (a long-lived response,
  :class:`streaming.responses.LiveResponse`) is closed as soon as sending stops.

daphne (``config.asgi``) and the unary server (``config.unary``) both serve Django through it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import django
from asgiref.sync import iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase

log = logging.getLogger(__name__)


class LiveASGIHandler(ASGIHandler):
    async def run_get_response(self, request: HttpRequest) -> HttpResponseBase:
        pending = asyncio.ensure_future(super().run_get_response(request))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            if _in_async_view(request):
                pending.cancel()  # it stops at its next await, as without the shield
            pending.add_done_callback(_close_unsent)
            raise

    async def send_response(self, response: HttpResponseBase, send: Any) -> None:
        try:
            await super().send_response(response, send)
        finally:
            aclose = getattr(response, "aclose", None)
            if aclose is not None:
                await aclose()


def _in_async_view(request: HttpRequest) -> bool:
    """Whether the request is in an async view, which a cancellation stops. Anything else
    may be on a thread that runs on into a sync view: a sync-only middleware (WhiteNoise)
    puts the rest of the chain, URL resolution included, on one."""
    match = getattr(request, "resolver_match", None)
    return match is not None and iscoroutinefunction(match.func)


def _close_unsent(pending: asyncio.Future[HttpResponseBase]) -> None:
    """Close the response of a request whose client left before it was sent (on a thread:
    closing gives slots back and cancels work, which blocks)."""
    if pending.cancelled() or pending.exception() is not None:
        return
    response = pending.result()

    def close() -> None:
        try:
            response.close()
        except Exception:
            log.exception("closing an unsent response failed")

    threading.Thread(target=close, name="close-unsent-response", daemon=True).start()


def asgi_application() -> LiveASGIHandler:
    """What ``django.core.asgi.get_asgi_application`` does, with this handler."""
    django.setup(set_prefix=False)
    return LiveASGIHandler()
