"""Long-lived HTTP responses: Server-Sent Events, results followers (NDJSON), media streams.

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
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from rest_framework import exceptions

from streaming import fanout, flow
from streaming.credentials import Binding, bind, bind_on_loop, unbind
from streaming.eventlog import END, GAP, Event, StreamNotFound, get_log
from streaming.services import Lease, stream_slot_release, stream_slot_take
from tenants.models import Tenant

log = logging.getLogger(__name__)
T = TypeVar("T")
Piece = str | bytes
Render = Callable[[Event], Piece | None]

TICK_SECONDS = 0.25  # the longest a WSGI body waits without yielding (see the module doc)
RETRY_AFTER_SECONDS = 1
CONNECTED = ": connected\n\n"  # proxies and clients see the stream open at once
HEARTBEAT = ": heartbeat\n\n"


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


# --- Server-Sent Events (and other renderings) of a stream in the log ------------------------


def sse_frame(event: Event) -> str:
    """One event as SSE lines. A ``gap`` carries no id, so a reconnect resumes after it."""
    lines = [] if event.event == GAP else [f"id: {event.id}"]
    lines += [f"event: {event.event}", f"data: {json.dumps(event.data, separators=(',', ':'))}"]
    return "\n".join(lines) + "\n\n"


def _error(code: str) -> Event:
    return Event(id="", event="error", data={"code": code})


def _joined(pieces: list[Piece]) -> Piece:
    """One write of a batch's pieces (a rendering gives all str or all bytes)."""
    if isinstance(pieces[0], bytes):
        return b"".join(cast(list[bytes], pieces))
    return "".join(cast(list[str], pieces))


@dataclass(frozen=True)
class _Shape:
    render: Render
    first: Piece | None
    heartbeat: Piece | None
    last: Piece | None


async def _events_async(
    stream_id: str, after: str | None, scope: MutableMapping[str, Any], shape: _Shape
) -> AsyncIterator[Piece]:
    """The rendered stream up to ``end``, read through the process's one reader of it
    (streaming.fanout): one write per batch read, paused while the client's socket is backed
    up (streaming.flow)."""
    if shape.first:
        yield shape.first
    try:
        async for batch in fanout.hub().follow(
            stream_id, after, idle=settings.SSE_HEARTBEAT_SECONDS
        ):
            if not batch:
                if shape.heartbeat:
                    yield shape.heartbeat
                continue
            pieces = [p for p in (shape.render(item.event) for item in batch) if p]
            if pieces:
                await flow.drain(scope)
                yield _joined(pieces)
    except StreamNotFound:
        expired = shape.render(_error("stream_expired"))
        if expired:
            yield expired
    if shape.last:
        yield shape.last


def _events_sync(stream_id: str, after: str | None, shape: _Shape) -> Iterator[Piece]:
    """:func:`_events_async` for a WSGI server: blocking reads of at most ``TICK_SECONDS``,
    an empty piece after each quiet one."""
    stream_log = get_log()
    if shape.first:
        yield shape.first
    quiet_since = time.monotonic()
    ended = False
    while not ended:
        asked = time.monotonic()
        try:
            events = stream_log.read(
                stream_id, after, block_ms=int(TICK_SECONDS * 1000), count=fanout.BATCH
            )
            if not events and time.monotonic() - asked < TICK_SECONDS / 2:
                # Answered at once: a closed stream this reader is past the end of.
                meta = stream_log.meta(stream_id)
                ended = meta is None or meta.closed
        except StreamNotFound:
            expired = shape.render(_error("stream_expired"))
            if expired:
                yield expired
            break
        pieces = []
        for event in events:
            if event.event != GAP:
                after = event.id
            piece = shape.render(event)
            if piece:
                pieces.append(piece)
            if event.event == END:
                ended = True
                break
        if pieces:
            quiet_since = time.monotonic()
            yield _joined(pieces)
        elif shape.heartbeat and time.monotonic() - quiet_since >= settings.SSE_HEARTBEAT_SECONDS:
            quiet_since = time.monotonic()
            yield shape.heartbeat
        else:
            yield ""
    if shape.last:
        yield shape.last


def event_response(
    request: HttpRequest,
    stream_id: str,
    *,
    hold: Hold,
    after: str | None = None,
    render: Render = sse_frame,
    content_type: str = "text/event-stream",
    first: Piece | None = CONNECTED,
    heartbeat: Piece | None = HEARTBEAT,
    last: Piece | None = None,
    on_close: Callable[[bool], None] | None = None,
    headers: dict[str, str] | None = None,
) -> LiveResponse:
    """A stream of the log as a long-lived response, SSE by default.

    ``after`` resumes after that event id; ``render`` turns an event into a piece (None:
    nothing sent; its rendering of an ``error`` event ``unauthenticated`` is the last piece
    when the credential is lost); ``first`` goes out at once, ``heartbeat`` after
    ``SSE_HEARTBEAT_SECONDS`` without an event, ``last`` after ``end`` (OpenAI's
    ``data: [DONE]``); ``on_close(abandoned)`` as :class:`LiveResponse`.
    """
    shape = _Shape(render, first, heartbeat, last)
    content: Iterator[Piece] | AsyncIterator[Piece]
    if isinstance(request, ASGIRequest):
        content = _events_async(stream_id, after, getattr(request, "scope", {}), shape)
    else:
        content = _events_sync(stream_id, after, shape)
    response = LiveResponse(
        content,
        hold=hold,
        content_type=content_type,
        lost=render(_error("unauthenticated")),
        on_close=on_close,
    )
    for name, value in (headers or {}).items():
        response[name] = value
    return response
