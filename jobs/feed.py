"""A job's results as its tasks finish: ``GET /v1/jobs/{id}/results?format=ndjson&follow=true``
(the ``data`` stream kind, docs/streams.md).

The database says what to send and the job's event stream says when to look. Lines come from
:func:`jobs.selectors.results_after`, a keyset read in commit order (``Task.finish_seq``) of at
most ``PAGE`` rows at a time, written in pieces of about ``FLUSH_BYTES``: a follower holds a
cursor and one page, whatever the job's size. Between reads it waits for the job's next
``progress`` or ``end`` event (published after each commit by the runner); when the stream is
gone (expired, Redis unreachable) it looks every ``JOBS_FOLLOW_POLL_SECONDS`` instead. It ends
once the job is no longer active and everything committed until then has been sent. While no
line goes out for ``SSE_HEARTBEAT_SECONDS`` it writes a blank line (NDJSON has no comments;
readers skip blank lines), which keeps proxies from timing the response out.

Two loops with one shape: :func:`lines_sync` blocks (a WSGI server's thread), and
:func:`lines_async` awaits (daphne): a client that goes away cancels it at its next await, so
its next query is never made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, MutableMapping
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from jobs import selectors
from jobs.selectors import Cursor
from streaming import fanout, flow
from streaming.eventlog import GAP, Event, StreamLog, StreamNotFound, get_log
from streaming.responses import TICK_SECONDS

log = logging.getLogger(__name__)

PAGE = 500  # finished tasks per query
FLUSH_BYTES = 256 * 1024  # lines go out in pieces of about this size
EVENTS_PER_READ = 1000
HEARTBEAT = b"\n"
_STATUS = selectors.RESULT_FIELDS.index("status")


class Feed:
    """Where one follower is: its cursor and the rows of its current page."""

    def __init__(self, job_id: Any, stream_id: str, *, after: Cursor, status: str | None) -> None:
        self.job_id = job_id
        self.stream_id = stream_id
        self.cursor = after
        self.status = status
        self._rows: deque[tuple[Cursor, tuple[Any, ...]]] = deque()
        self._full = False  # the last page was full: more may be committed already

    def take(self) -> tuple[bytes, bool]:
        """The next piece of lines after the cursor (at most one query), and whether more may
        follow at once; False: everything committed when the last page was read is taken.
        Results in object storage are read one line at a time, as the piece is made. Rows of
        another status than the one asked for move the cursor too, so a filtered follower
        never reads them again."""
        if not self._rows:
            page = selectors.results_after(self.job_id, self.cursor, limit=PAGE)
            self._rows.extend(page)
            self._full = len(page) == PAGE
        out: list[bytes] = []
        size = 0
        while self._rows and size < FLUSH_BYTES:
            cursor, row = self._rows.popleft()
            self.cursor = cursor
            if self.status is not None and row[_STATUS] != self.status:
                continue
            line = selectors.result_line(row)
            line["cursor"] = cursor.token
            raw = selectors.ndjson(line)
            out.append(raw)
            size += len(raw)
        return b"".join(out), bool(self._rows) or self._full


def _moved(events: list[Event], after: str | None) -> str | None:
    """The position after these events (a ``gap`` carries no position of its own)."""
    for event in reversed(events):
        if event.event != GAP:
            return event.id
    return str(events[-1].data.get("last_dropped") or after) if events else after


def _wait_sync(
    stream_log: StreamLog, stream: str, after: str | None, seconds: float
) -> Generator[bytes, None, str | None]:
    """Until the job's stream has an event after ``after``, or ``seconds`` pass; returns the
    new position. A closed or missing stream answers at once: then wait up to the poll
    interval instead of spinning. It waits in steps of at most ``TICK_SECONDS`` and yields an
    empty piece after each, so the response notices a lost credential (streaming.responses)."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        step = min(left, TICK_SECONDS)
        asked = time.monotonic()
        events: list[Event] = []
        try:
            events = stream_log.read(
                stream, after, block_ms=max(1, int(step * 1000)), count=EVENTS_PER_READ
            )
        except StreamNotFound:
            pass
        except (RedisError, OSError):
            log.warning("stream %s: read failed; polling the database", stream, exc_info=True)
        if events:
            return _moved(events, after)
        if time.monotonic() - asked < step / 2:  # answered at once
            yield from _nap(min(left, settings.JOBS_FOLLOW_POLL_SECONDS))
            return after
        yield b""
    return after


def _nap(seconds: float) -> Iterator[bytes]:
    """Sleep, in steps of at most ``TICK_SECONDS``, an empty piece after each."""
    napped = 0.0
    while napped < seconds:
        nap = min(TICK_SECONDS, seconds - napped)
        time.sleep(nap)
        napped += nap
        yield b""


def lines_sync(feed: Feed) -> Iterator[bytes]:
    """The response body under a WSGI server: blocks its thread between reads."""
    stream_log = get_log()
    beat = settings.SSE_HEARTBEAT_SECONDS
    position: str | None = None  # in the job's stream; None: from its start
    sent = time.monotonic() - beat  # nothing yet: a blank line at once sends the headers
    while True:
        # Read before the lines: every line committed before the job stopped being active is
        # visible to the reads that follow.
        active = selectors.job_active(feed.job_id)
        more = True
        while more:
            piece, more = feed.take()
            if piece:
                sent = time.monotonic()
                yield piece
        if not active:
            return
        if time.monotonic() - sent >= beat:
            sent = time.monotonic()
            yield HEARTBEAT
        quiet_left = max(0.01, beat - (time.monotonic() - sent))
        position = yield from _wait_sync(stream_log, feed.stream_id, position, quiet_left)


async def _wakeups(stream: str) -> AsyncGenerator[None, None]:
    """Once at once, then whenever the job may have news: an event on its stream (read through
    the process's one reader of that stream, streaming.fanout), ``SSE_HEARTBEAT_SECONDS``
    without one, or, while the stream is gone or closed, every poll interval."""
    yield
    after: str | None = None
    while True:
        try:
            follow = cast(
                AsyncGenerator[list[fanout.Item], None],
                fanout.hub().follow(stream, after, idle=settings.SSE_HEARTBEAT_SECONDS),
            )
            async with contextlib.aclosing(follow) as batches:
                async for batch in batches:
                    after = _moved([item.event for item in batch], after)
                    yield
        except StreamNotFound:
            pass
        except (RedisError, OSError):
            log.warning("stream %s: read failed; polling the database", stream, exc_info=True)
        await asyncio.sleep(settings.JOBS_FOLLOW_POLL_SECONDS)
        yield


async def lines_async(feed: Feed, scope: MutableMapping[str, Any]) -> AsyncIterator[bytes]:
    """The response body under daphne. Database reads run on the request's thread; a client
    that goes away cancels this at its next await. Reading pauses while the client's socket
    is backed up (streaming.flow), so a slow reader does not pile lines up in the server."""
    loop = asyncio.get_running_loop()
    beat = settings.SSE_HEARTBEAT_SECONDS
    sent = loop.time() - beat
    take = sync_to_async(feed.take)
    active_now = sync_to_async(selectors.job_active)
    async with contextlib.aclosing(_wakeups(feed.stream_id)) as wakeups:
        async for _ in wakeups:
            active = await active_now(feed.job_id)  # before the lines, as in lines_sync
            more = True
            while more:
                piece, more = await take()
                if piece:
                    await flow.drain(scope)
                    sent = loop.time()
                    yield piece
            if not active:
                return
            if loop.time() - sent >= beat:
                sent = loop.time()
                yield HEARTBEAT
