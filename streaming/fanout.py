"""Per-process fan-out of stream reads: one reader per stream per process, however many
subscribers that process serves.

Each subscriber doing its own blocking read (``XREAD BLOCK`` on its own Redis connection, or a
thread parked in the in-process log) does not scale: 5,000 subscribers of one stream would be
5,000 connections and 5,000 reads of the same event. Here a :class:`Tail` reads the stream
once, keeps a small window of the latest events (``WINDOW`` events, with each one's WebSocket
frame encoded once) and wakes the subscribers waiting on it. A subscriber holds only its
position: it takes what follows its position from the window, and when it is behind the window
(it resumed from an old id, or it was paused by a slow client) it reads the log itself until it
catches up — so resume semantics, ``gap`` events included, are exactly the log's.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from streaming.eventlog import END, GAP, Event, StreamLog, StreamNotFound, get_log, id_key

log = logging.getLogger(__name__)

WINDOW = 1024  # latest events a tail keeps for the subscribers that keep up (> one BATCH)
BATCH = 500  # events per log read
TAIL_BLOCK_MS = 5000  # one blocking read of the tail; it is cancelled when nobody listens


class Item:
    """An event and, encoded on first use and then shared by every WebSocket subscriber of
    the process, its WebSocket text frame."""

    __slots__ = ("_frame", "event")

    def __init__(self, event: Event) -> None:
        self.event = event
        self._frame: str | None = None

    @property
    def frame(self) -> str:
        if self._frame is None:
            self._frame = ws_frame(self.event)
        return self._frame


def ws_frame(event: Event) -> str:
    return json.dumps({"type": "event", **event.envelope()}, separators=(",", ":"))


def _items(events: list[Event]) -> list[Item]:
    return [Item(e) for e in events]


class Tail:
    """The one reader of a stream in this process, and the window of what it read."""

    def __init__(self, stream_log: StreamLog, stream: str, start: str | None) -> None:
        self.log = stream_log
        self.stream = stream
        # The window holds, without holes, the events after ``base`` up to ``last``.
        self.base = start
        self.last = start
        self.window: deque[Item] = deque()
        self.ended = False
        self.missing = False
        self.subscribers = 0
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def after(self, cursor: str | None) -> list[Item] | None:
        """What follows ``cursor`` in the window; None when the window cannot tell (the
        cursor is before it)."""
        if cursor == self.base:
            return list(self.window)
        if cursor is None or (self.base is None and not self.window):
            return None
        mark = id_key(cursor)
        if self.base is not None and mark < id_key(self.base):
            return None
        if self.base is None and mark < id_key(self.window[0].event.id):
            return None
        start = bisect.bisect_right(self.window, mark, key=lambda item: id_key(item.event.id))
        return list(itertools.islice(self.window, start, None))

    async def wait(self, timeout: float | None) -> bool:
        """Until the tail has news; False on timeout."""
        changed = self._changed
        try:
            # Not wait_for: on Python 3.11 it swallows a cancellation that arrives as the
            # event is set, and a reader whose client left would then read on to the end.
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            return False
        return True

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _take(self, events: list[Event]) -> None:
        if events[0].event == GAP:
            # The tail itself fell behind the trim: every subscriber re-reads from the log,
            # which tells each one about its own gap.
            gap, kept = events[0], events[1:]
            self.window.clear()
            self.base = self.last = kept[-1].id if kept else str(gap.data["last_dropped"])
            self.ended = bool(kept) and kept[-1].event == END
            return
        self.window.extend(_items(events))
        self.last = events[-1].id
        while len(self.window) > WINDOW:
            self.base = self.window.popleft().event.id
        if events[-1].event == END:
            self.ended = True

    async def run(self) -> None:
        while not self.ended:
            try:
                events = await self.log.aread(
                    self.stream, self.last, block_ms=TAIL_BLOCK_MS, count=BATCH
                )
            except StreamNotFound:
                self.missing = True
                self._notify()
                return
            except (RedisError, OSError):
                log.warning("stream %s: read failed, retrying", self.stream, exc_info=True)
                await asyncio.sleep(1)
                continue
            if events:
                self._take(events)
                self._notify()
            elif await self._closed():
                self.ended = True
                self._notify()

    async def _closed(self) -> bool:
        """A closed stream answers reads at once: stop instead of spinning."""
        meta = await asyncio.to_thread(self.log.meta, self.stream)
        return meta is None or meta.closed


class Hub:
    """The tails of one event loop (daphne has one per process)."""

    def __init__(self, stream_log: StreamLog) -> None:
        self.log = stream_log
        self.tails: dict[str, Tail] = {}

    def _join(self, stream: str, start: str | None) -> Tail:
        tail = self.tails.get(stream)
        if tail is None:
            tail = self.tails[stream] = Tail(self.log, stream, start)
            tail.task = asyncio.create_task(tail.run(), name=f"tail:{stream}")
        tail.subscribers += 1
        return tail

    def _leave(self, tail: Tail) -> None:
        tail.subscribers -= 1
        if tail.subscribers <= 0:
            if tail.task is not None:
                tail.task.cancel()
            if self.tails.get(tail.stream) is tail:
                del self.tails[tail.stream]

    async def follow(
        self, stream: str, after: str | None, *, idle: float | None = None
    ) -> AsyncIterator[list[Item]]:
        """Batches of events after ``after`` until ``end``. With ``idle`` set, an empty batch
        after that many quiet seconds (heartbeats). Raises StreamNotFound when the stream is
        missing or expires."""
        tail = self._join(stream, after)
        cursor = after
        try:
            while True:
                items = tail.after(cursor)
                if items is None:  # behind the window: read the log itself
                    items = _items(await self.log.aread(stream, cursor, count=BATCH))
                if not items:
                    if tail.missing:
                        raise StreamNotFound(stream)
                    if tail.ended and tail.after(cursor) == []:
                        return
                    if not await tail.wait(idle):
                        yield []
                    continue
                yield items
                for item in items:
                    if item.event.event != GAP:
                        cursor = item.event.id
                    if item.event.event == END:
                        return
        finally:
            self._leave(tail)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """The running loop's hub over the process's stream log."""
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None:
        found = _hubs[loop] = Hub(get_log())
    return found
