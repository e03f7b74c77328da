"""Server-Sent Events: what every SSE entry point imports (docs/streams.md, "Server-Sent
Events").

- :func:`event_response`: a stream of the log as a long-lived response
  (:mod:`streaming.responses`), SSE by default; its body is an async iterator under an ASGI
  server and a sync one under a WSGI server, both driven by one :class:`Framing` (the
  framing, the heartbeat, the resume position and the end);
- :func:`sse_frame`: one event as ``id:``/``event:``/``data:`` lines;
- :func:`authenticate_sse`, :func:`resume_after`, :func:`refusal`: the key, plan, resume id
  and problem+json answers of an async SSE view, which runs outside REST framework.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from typing import Any, cast

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from rest_framework import exceptions

from plumbing.problems import exception_response, problem_response
from streaming import fanout, flow
from streaming.eventlog import END, GAP, Event, StreamNotFound, get_log, valid_id
from streaming.responses import TICK_SECONDS, Hold, LiveResponse, Piece
from tenants.authentication import authenticate_credential, presented_credential
from tenants.limits import enforce_plan
from tenants.selectors import KeyContext

Render = Callable[[Event], Piece | None]

CONNECTED = ": connected\n\n"  # proxies and clients see the stream open at once
HEARTBEAT = ": heartbeat\n\n"


# --- an SSE view's request -------------------------------------------------------------------


def authenticate_sse(request: HttpRequest, scope: str = "streams") -> KeyContext:
    """What DRF's authentication and plan throttle do, for the async SSE views (outside DRF)."""
    raw = presented_credential(request)
    if raw is None:
        raise exceptions.NotAuthenticated()
    ctx = authenticate_credential(raw)
    if not ctx.has_scope(scope):
        raise exceptions.PermissionDenied(f"This API key lacks the '{scope}' scope.")
    enforce_plan(request, ctx)
    return ctx


def refusal(request: HttpRequest, exc: exceptions.APIException) -> HttpResponseBase:
    """An authentication or limit refusal of an SSE view as problem+json."""
    return exception_response(request, exc)


def resume_after(request: HttpRequest) -> tuple[str | None, HttpResponseBase | None]:
    """The id to resume after (``Last-Event-ID`` or ``?after=``), or a 422 when malformed."""
    after = request.headers.get("Last-Event-ID") or request.GET.get("after") or None
    if after is not None and not valid_id(after):
        return None, problem_response(
            422,
            slug="validation-error",
            detail="Last-Event-ID is not a stream id.",
            errors=[
                {"field": "Last-Event-ID", "detail": "Expected <ms>-<seq>.", "code": "invalid"}
            ],
        )
    return after, None


# --- the body: events of the log, rendered -----------------------------------------------------


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


class Framing:
    """What a body sends, whichever server reads it: ``first`` at once, each batch of events
    rendered as one piece, ``heartbeat`` while quiet, the ``stream_expired`` error, ``last``
    after ``end``; it keeps the id to resume after and whether ``end`` went out."""

    def __init__(
        self,
        render: Render,
        *,
        after: str | None,
        first: Piece | None,
        heartbeat: Piece | None,
        last: Piece | None,
    ) -> None:
        self.render = render
        self.after = after
        self.first = first
        self.heartbeat = heartbeat
        self.last = last
        self.ended = False

    def batch(self, events: list[Event]) -> Piece | None:
        """The batch's events up to ``end`` as one piece (None: nothing to send)."""
        pieces = []
        for event in events:
            if event.event != GAP:
                self.after = event.id
            piece = self.render(event)
            if piece:
                pieces.append(piece)
            if event.event == END:
                self.ended = True
                break
        return _joined(pieces) if pieces else None

    def expired(self) -> Piece | None:
        return self.render(_error("stream_expired"))


async def _events_async(
    stream_id: str, scope: MutableMapping[str, Any], framing: Framing
) -> AsyncIterator[Piece]:
    """The rendered stream up to ``end``, read through the process's one reader of it
    (streaming.fanout): one write per batch read, paused while the client's socket is backed
    up (streaming.flow)."""
    if framing.first:
        yield framing.first
    try:
        async for batch in fanout.hub().follow(
            stream_id, framing.after, idle=settings.SSE_HEARTBEAT_SECONDS
        ):
            if not batch:  # quiet for SSE_HEARTBEAT_SECONDS
                if framing.heartbeat:
                    yield framing.heartbeat
                continue
            piece = framing.batch([item.event for item in batch])
            if piece:
                await flow.drain(scope)
                yield piece
    except StreamNotFound:
        expired = framing.expired()
        if expired:
            yield expired
    if framing.last:
        yield framing.last


def _events_sync(stream_id: str, framing: Framing) -> Iterator[Piece]:
    """:func:`_events_async` for a WSGI server: blocking reads of at most ``TICK_SECONDS``,
    an empty piece after each quiet one."""
    stream_log = get_log()
    if framing.first:
        yield framing.first
    quiet_since = time.monotonic()
    while not framing.ended:
        asked = time.monotonic()
        try:
            events = stream_log.read(
                stream_id, framing.after, block_ms=int(TICK_SECONDS * 1000), count=fanout.BATCH
            )
            if not events and time.monotonic() - asked < TICK_SECONDS / 2:
                # Answered at once: a closed stream this reader is past the end of.
                meta = stream_log.meta(stream_id)
                framing.ended = meta is None or meta.closed
        except StreamNotFound:
            expired = framing.expired()
            if expired:
                yield expired
            break
        piece = framing.batch(events)
        if piece:
            quiet_since = time.monotonic()
            yield piece
        elif framing.heartbeat and time.monotonic() - quiet_since >= settings.SSE_HEARTBEAT_SECONDS:
            quiet_since = time.monotonic()
            yield framing.heartbeat
        else:
            yield ""
    if framing.last:
        yield framing.last


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
    framing = Framing(render, after=after, first=first, heartbeat=heartbeat, last=last)
    content: Iterator[Piece] | AsyncIterator[Piece]
    if isinstance(request, ASGIRequest):
        content = _events_async(stream_id, getattr(request, "scope", {}), framing)
    else:
        content = _events_sync(stream_id, framing)
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
