"""Long-lived HTTP responses: Server-Sent Events (their bodies: :mod:`streaming.sse`), results
followers (NDJSON), media streams.

Whatever produces its body, every such response

- holds one of the tenant's ``concurrent_streams`` slots while it is open (:func:`hold_take`:
  429 ``too-many-streams`` with ``Retry-After`` when all are taken; a staff session holds
  none);
- is bound to the credential that opened it (:mod:`streaming.credentials`): once that stops
  verifying (revoked, expired, tenant deactivated) the body ends, with the shape's last words
  (SSE: an ``error`` event ``{"code": "unauthenticated"}``) or without (NDJSON);
- runs its ``on_close(abandoned)`` exactly once when it is over — when the body ended, when
  the client went away (``abandoned``: stop the work nobody reads), or when the server drops
  a response it never sent — and gives its slot back then.

A body is a sync iterator under a WSGI server and an async one under an ASGI server. Its
pieces are ``str`` or ``bytes``; an empty piece sends nothing (a sync body yields one at least
every ``TICK_SECONDS``, so that it notices a lost credential: a blocked read cannot be
interrupted in a thread). An async body is interrupted at once: the request's task is
cancelled where it waits, and the cancellation is taken back here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from django.http import StreamingHttpResponse
from rest_framework import exceptions

from streaming.credentials import Binding, bind, bind_on_loop, unbind
from streaming.services import Lease, stream_slot_release, stream_slot_take
from tenants.models import Tenant

log = logging.getLogger(__name__)
T = TypeVar("T")
Piece = str | bytes

TICK_SECONDS = 0.25  # the longest a WSGI body waits without yielding (see the module doc)
RETRY_AFTER_SECONDS = 1


class TooManyStreams(exceptions.Throttled):
    default_detail = "All of this tenant's concurrent streams are in use."
    default_code = "too_many_streams"
    problem_slug = "too-many-streams"

    def __init__(self) -> None:
        super().__init__(wait=RETRY_AFTER_SECONDS)


@dataclass(frozen=True)
class Hold:
    """What a long-lived response holds while it is open: one of the tenant's stream slots
    (None: a staff session) and the credential it was opened with (None: a session)."""

    lease: Lease | None = None
    credential: str | None = None


def hold_take(tenant: Tenant | None, credential: str | None) -> Hold:
    """A slot of the tenant's (none for a staff session, ``tenant`` None), or TooManyStreams."""
    if tenant is None:
        return Hold(None, credential)
    lease = stream_slot_take(tenant)
    if lease is None:
        raise TooManyStreams()
    return Hold(lease, credential)


def hold_release(hold: Hold) -> None:
    if hold.lease is not None:
        stream_slot_release(hold.lease)


async def unless_abandoned(work: Awaitable[T], undo: Callable[[T], None]) -> T:
    """``await work`` for an async view; if the request is cancelled meanwhile (its client
    left), the work still finishes and ``undo`` gets what it made, on a thread — so a slot
    taken or a stream started for nobody is not left behind."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda done: _undo(done, undo))
        raise


def _undo(done: asyncio.Future[T], undo: Callable[[T], None]) -> None:
    if done.cancelled() or done.exception() is not None:
        return  # nothing was made
    _on_thread(undo, done.result())


async def hold_take_async(tenant: Tenant | None, credential: str | None) -> Hold:
    """:func:`hold_take` for an async view (off the event loop, nothing left behind)."""
    return await unless_abandoned(asyncio.to_thread(hold_take, tenant, credential), hold_release)


def _on_thread(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn`` on a thread of its own, logging its failure: from an event loop, for
    blocking work that must happen even while the request's task is being cancelled."""

    def run() -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("closing a long-lived response failed")

    threading.Thread(target=run, name="live-response-close", daemon=True).start()


class LiveResponse(StreamingHttpResponse):
    """A long-lived response (see the module doc). ``lost``: the last piece sent when the
    credential stops verifying (None: the body just ends)."""

    def __init__(
        self,
        content: Iterator[Piece] | AsyncIterator[Piece],
        *,
        hold: Hold,
        content_type: str,
        lost: Piece | None = None,
        on_close: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__(content_type=content_type)
        self._hold = hold
        self._lost = lost
        self._on_close = on_close
        self._binding: Binding | None = None
        self._over_lock = threading.Lock()
        self._is_over = False
        self._async_body: AsyncIterator[Piece] | None = None
        if isinstance(content, AsyncIterator):
            self._async_body = self._guard_async(content)
            self.streaming_content = self._async_body
        else:
            self.streaming_content = self._guard_sync(content)
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # nginx passes each piece on at once

    def _claim(self) -> bool:
        """Whether this caller is the one that ends the response (exactly one is)."""
        with self._over_lock:
            claimed, self._is_over = not self._is_over, True
        return claimed

    def _over(self, abandoned: bool) -> None:
        """Unbind the credential, give the slot back, run ``on_close`` (once: see _claim)."""
        try:
            if self._binding is not None:
                unbind(self._binding)
            hold_release(self._hold)
        finally:
            if self._on_close is not None:
                self._on_close(abandoned)

    def close(self) -> None:
        super().close()
        # A body that never started (the client left first, or the server dropped the
        # response) or that a server stopped reading: over, and abandoned.
        if self._claim():
            self._over(abandoned=True)

    async def aclose(self) -> None:
        """End an async body now (its ``finally`` blocks run at once, not at garbage
        collection): for the ASGI handler when it stops sending (streaming.handler)."""
        body = self._async_body
        if body is not None and hasattr(body, "aclose"):
            await body.aclose()

    def _guard_sync(self, content: Iterator[Piece]) -> Iterator[Piece]:
        credential = self._hold.credential
        binding = self._binding = bind(credential) if credential else None
        finished = False
        try:
            for piece in content:
                if binding is not None and binding.lost:
                    if self._lost:
                        yield self._lost
                    return
                if piece:
                    yield piece
            finished = True
        finally:
            close = getattr(content, "close", None)
            if close is not None:
                close()
            if self._claim():
                self._over(abandoned=not finished)

    async def _guard_async(self, content: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
        task = asyncio.current_task()
        waiting = interrupted = False

        def interrupt() -> None:  # on the loop, when the credential is lost
            nonlocal interrupted
            if waiting and not interrupted and task is not None:
                interrupted = True
                task.cancel()

        credential = self._hold.credential
        binding = self._binding = bind_on_loop(credential, interrupt) if credential else None
        finished = False
        try:
            while binding is None or not binding.lost:
                waiting = True
                try:
                    piece = await anext(content)
                except StopAsyncIteration:
                    finished = True
                    return
                except asyncio.CancelledError:
                    # Ours (the credential is lost) unless the client left too.
                    if task is None or not interrupted or task.cancelling() > 1:
                        raise
                    task.uncancel()
                    break
                finally:
                    waiting = False
                if piece:
                    yield piece
            if self._lost:
                yield self._lost
        finally:
            aclose = getattr(content, "aclose", None)
            if aclose is not None:
                await aclose()
            # Claimed here, so a close() racing the thread cannot call it abandoned; the
            # rest blocks (Redis, the broker), and the task may be being cancelled.
            if self._claim():
                _on_thread(self._over, not finished)
