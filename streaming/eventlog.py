"""The stream log: append-only, ordered, bounded, resumable — the one public API producers
(inference, jobs) and consumers (SSE views, WebSocket consumers) use.

Production: Redis Streams (``XADD … MAXLEN ~``, ``XREAD BLOCK``, ``EXPIRE``). Embedded default:
an in-process log with the same ids and the same behaviour; one test suite runs on both.

Every event is the envelope ``{"id", "event", "data"}`` (event types: docs/streams.md). A
stream is bounded in length (``maxlen``, oldest trimmed first) and in time (``ttl``, renewed by
every append). A reader that resumes from an id that has been trimmed gets a ``gap`` event
first, never a silent hole. The Channels layer is not used for events (it drops silently when
a channel is full).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings

END = "end"
GAP = "gap"


@dataclass(frozen=True)
class Event:
    id: str
    event: str
    data: dict[str, Any]

    def envelope(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.event, "data": self.data}


@dataclass(frozen=True)
class StreamMeta:
    """Who owns a stream and its bounds. ``closed``: the ``end`` event has been appended."""

    tenant_id: int
    kind: str
    maxlen: int
    ttl: int
    closed: bool = False


class StreamNotFound(LookupError):
    pass


def id_key(stream_id: str) -> tuple[int, int]:
    """Order of log ids (``<ms>-<seq>``, as Redis Streams)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def valid_id(value: str) -> bool:
    ms, dash, seq = value.partition("-")
    return ms.isdigit() and (not dash or seq.isdigit()) and len(value) <= 40


def _gap(after: str, first_kept: str | None, last_dropped: str) -> Event:
    return Event(
        id=after,
        event=GAP,
        data={"after": after, "last_dropped": last_dropped, "resumes_at": first_kept},
    )


class StreamLog(Protocol):
    def create(
        self,
        stream: str,
        *,
        tenant_id: int,
        kind: str,
        maxlen: int | None = None,
        ttl: int | None = None,
    ) -> StreamMeta: ...

    def meta(self, stream: str) -> StreamMeta | None: ...

    def adopt(self, stream: str, tenant_id: int) -> None:
        """Give an existing stream to a tenant (a request's log stream, once it is known
        whose request it is)."""
        ...

    def append(self, stream: str, event: str, data: dict[str, Any]) -> str: ...

    def read(
        self, stream: str, after: str | None = None, *, block_ms: int = 0, count: int = 100
    ) -> list[Event]: ...

    async def aread(
        self, stream: str, after: str | None = None, *, block_ms: int = 0, count: int = 100
    ) -> list[Event]:
        """``read`` for the event loop: waits without holding a thread."""
        ...

    def close(self, stream: str, data: dict[str, Any] | None = None) -> str: ...

    def request_cancel(self, stream: str) -> None: ...

    def is_cancelled(self, stream: str) -> bool: ...


# --- In-process log (embedded default) ---------------------------------------------------------


@dataclass
class _MemoryStream:
    meta: StreamMeta
    expires_at: float
    events: deque[Event] = field(default_factory=deque)
    last_dropped: str | None = None
    cancelled: bool = False


class MemoryLog:
    """The embedded log: a bounded deque per stream, a condition to wake blocked readers,
    expiry checked on access and by a sweep of at most every second."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._streams: dict[str, _MemoryStream] = {}
        self._cond = threading.Condition()
        self._last_id = (0, 0)
        self._swept = 0.0
        # Event-loop readers waiting for a stream: woken thread-safely by append/cancel.
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def _next_id(self) -> str:
        ms = int(self._clock() * 1000)
        last_ms, last_seq = self._last_id
        self._last_id = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    def _live(self, stream: str) -> _MemoryStream | None:
        now = self._clock()
        if now - self._swept >= 1:
            self._swept = now
            for name in [n for n, s in self._streams.items() if s.expires_at <= now]:
                del self._streams[name]
        found = self._streams.get(stream)
        if found is not None and found.expires_at <= now:
            del self._streams[stream]
            return None
        return found

    def create(
        self,
        stream: str,
        *,
        tenant_id: int,
        kind: str,
        maxlen: int | None = None,
        ttl: int | None = None,
    ) -> StreamMeta:
        meta = StreamMeta(
            tenant_id=tenant_id,
            kind=kind,
            maxlen=maxlen or settings.STREAM_MAXLEN,
            ttl=ttl or settings.STREAM_TTL_SECONDS,
        )
        with self._cond:
            self._streams[stream] = _MemoryStream(meta=meta, expires_at=self._clock() + meta.ttl)
        return meta

    def meta(self, stream: str) -> StreamMeta | None:
        with self._cond:
            found = self._live(stream)
            return found.meta if found else None

    def adopt(self, stream: str, tenant_id: int) -> None:
        with self._cond:
            found = self._live(stream)
            if found is None:
                raise StreamNotFound(stream)
            found.meta = StreamMeta(**{**found.meta.__dict__, "tenant_id": tenant_id})

    def append(self, stream: str, event: str, data: dict[str, Any]) -> str:
        with self._cond:
            found = self._live(stream)
            if found is None:
                raise StreamNotFound(stream)
            entry = Event(id=self._next_id(), event=event, data=data)
            found.events.append(entry)
            while len(found.events) > found.meta.maxlen:
                found.last_dropped = found.events.popleft().id
            found.expires_at = self._clock() + found.meta.ttl
            if event == END:
                found.meta = StreamMeta(**{**found.meta.__dict__, "closed": True})
            self._cond.notify_all()
            self._wake(stream)
            return entry.id

    def _wake(self, stream: str) -> None:
        for loop, waiter in self._waiters.pop(stream, []):
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_resolve, waiter)

    def _after(self, found: _MemoryStream, after: str | None, count: int) -> list[Event]:
        if after is None:
            return list(itertools.islice(found.events, count))
        mark = id_key(after)
        out: list[Event] = []
        if found.last_dropped is not None and mark < id_key(found.last_dropped):
            first = found.events[0].id if found.events else None
            out.append(_gap(after, first, found.last_dropped))
        # Ids increase along the deque: find the first one past the mark by bisection.
        start = bisect.bisect_right(found.events, mark, key=lambda e: id_key(e.id))
        out.extend(itertools.islice(found.events, start, start + count))
        return out[:count]

    def read(
        self, stream: str, after: str | None = None, *, block_ms: int = 0, count: int = 100
    ) -> list[Event]:
        deadline = time.monotonic() + block_ms / 1000
        with self._cond:
            while True:
                found = self._live(stream)
                if found is None:
                    raise StreamNotFound(stream)
                events = self._after(found, after, count)
                left = deadline - time.monotonic()
                if events or left <= 0 or found.meta.closed:
                    return events
                self._cond.wait(left)

    async def aread(
        self, stream: str, after: str | None = None, *, block_ms: int = 0, count: int = 100
    ) -> list[Event]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            with self._cond:
                found = self._live(stream)
                if found is None:
                    raise StreamNotFound(stream)
                events = self._after(found, after, count)
                if events or found.meta.closed or loop.time() >= deadline:
                    return events
                self._waiters.setdefault(stream, []).append((loop, waiter))
            try:
                async with asyncio.timeout_at(deadline):  # not wait_for: see fanout.Tail.wait
                    await waiter
            except TimeoutError:
                pass
            finally:
                with self._cond:
                    waiting = self._waiters.get(stream, [])
                    if (loop, waiter) in waiting:
                        waiting.remove((loop, waiter))
                    if not waiting:
                        self._waiters.pop(stream, None)

    def close(self, stream: str, data: dict[str, Any] | None = None) -> str:
        return self.append(stream, END, data or {})

    def request_cancel(self, stream: str) -> None:
        with self._cond:
            found = self._live(stream)
            if found is None:
                raise StreamNotFound(stream)
            found.cancelled = True
            self._cond.notify_all()
            self._wake(stream)

    def is_cancelled(self, stream: str) -> bool:
        with self._cond:
            found = self._live(stream)
            return bool(found and found.cancelled)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# --- Redis Streams (production) ----------------------------------------------------------------


# Append in one round trip: check the stream exists, add, trim to maxlen exactly while
# remembering the last trimmed id (Redis records it only for XDEL), renew the TTLs, mark closed.
_APPEND = """
local meta = redis.call('HMGET', KEYS[2], 'maxlen', 'ttl')
if not meta[1] then return redis.error_reply('NOSTREAM') end
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[1], 'd', ARGV[2])
local over = redis.call('XLEN', KEYS[1]) - tonumber(meta[1])
if over > 0 then
  local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)
  redis.call('XTRIM', KEYS[1], 'MAXLEN', meta[1])
  redis.call('HSET', KEYS[2], 'last_dropped', old[#old][1])
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], meta[2]) end
if ARGV[1] == 'end' then redis.call('HSET', KEYS[2], 'closed', 1) end
return id
"""


_ADOPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'tenant_id', ARGV[1])
return 1
"""


class RedisLog:
    """Redis Streams. Keys: ``<prefix>:stream:{<id>}`` (the stream), ``…:meta`` (a hash:
    tenant, kind, bounds, closed, last trimmed id), ``…:cancel`` (a flag); all three carry the
    stream's TTL and one hash tag, so they live on one node of a cluster."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=None, socket_connect_timeout=2
        )
        self._append = self._redis.register_script(_APPEND)
        self._adopt = self._redis.register_script(_ADOPT)
        self._prefix = prefix
        self._url = url
        # redis.asyncio clients belong to one event loop each.
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def _key(self, stream: str, part: str = "") -> str:
        return f"{self._prefix}:stream:{{{stream}}}{':' + part if part else ''}"

    def _keys(self, stream: str) -> list[str]:
        return [self._key(stream), self._key(stream, "meta"), self._key(stream, "cancel")]

    def create(
        self,
        stream: str,
        *,
        tenant_id: int,
        kind: str,
        maxlen: int | None = None,
        ttl: int | None = None,
        pipe: Any = None,
    ) -> StreamMeta:
        """``pipe``: a pipeline (of any client on this Redis) to queue the commands on, for
        the caller to execute with its own (one round trip); else they run now."""
        meta = StreamMeta(
            tenant_id=tenant_id,
            kind=kind,
            maxlen=maxlen or settings.STREAM_MAXLEN,
            ttl=ttl or settings.STREAM_TTL_SECONDS,
        )
        own = pipe is None
        if own:
            pipe = self._redis.pipeline()
        pipe.delete(*self._keys(stream))
        fields: dict[str | bytes, str | int] = {
            "tenant_id": tenant_id,
            "kind": kind,
            "maxlen": meta.maxlen,
            "ttl": meta.ttl,
        }
        pipe.hset(self._key(stream, "meta"), mapping=fields)
        pipe.expire(self._key(stream, "meta"), meta.ttl)
        if own:
            pipe.execute()
        return meta

    def _meta(self, stream: str) -> dict[str, str]:
        return dict(self._redis.hgetall(self._key(stream, "meta")))

    def meta(self, stream: str) -> StreamMeta | None:
        raw = self._meta(stream)
        if not raw:
            return None
        return StreamMeta(
            tenant_id=int(raw["tenant_id"]),
            kind=raw["kind"],
            maxlen=int(raw["maxlen"]),
            ttl=int(raw["ttl"]),
            closed=raw.get("closed") == "1",
        )

    def adopt(self, stream: str, tenant_id: int) -> None:
        # Only if it still exists: a bare HSET would resurrect an expired stream's meta.
        if not self._adopt(keys=[self._key(stream, "meta")], args=[tenant_id]):
            raise StreamNotFound(stream)

    def append(self, stream: str, event: str, data: dict[str, Any]) -> str:
        import redis

        try:
            return str(self._append(keys=self._keys(stream), args=[event, json.dumps(data)]))
        except redis.ResponseError as exc:
            if "NOSTREAM" in str(exc):
                raise StreamNotFound(stream) from exc
            raise

    @staticmethod
    def _decode(entries: list[tuple[str, dict[str, str]]]) -> list[Event]:
        return [Event(id=i, event=f["e"], data=json.loads(f["d"])) for i, f in entries]

    def read(
        self, stream: str, after: str | None = None, *, block_ms: int = 0, count: int = 100
    ) -> list[Event]:
        raw = self._meta(stream)
        if not raw:
            raise StreamNotFound(stream)
        key = self._key(stream)
        dropped = raw.get("last_dropped")
        if after is not None and dropped and id_key(after) < id_key(dropped):
            kept = self._decode(self._redis.xrange(key, min="-", count=count))
            return [_gap(after, kept[0].id if kept else None, dropped), *kept][:count]
        if block_ms and raw.get("closed") != "1":
            got = self._redis.xread({key: after or "0-0"}, count=count, block=block_ms)
            return self._decode(got[0][1]) if got else []
        return self._decode(self._redis.xrange(key, min=f"({after}" if after else "-", count=count))

    def _aclient(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(
                self._url, decode_responses=True, socket_timeout=None, socket_connect_timeout=2
            )
            self._aclients[loop] = client
        return client

    async def aread(
        self, stream: str, after: str | None = None, *, block_ms: int = 0, count: int = 100
    ) -> list[Event]:
        client = self._aclient()
        raw = await client.hgetall(self._key(stream, "meta"))
        if not raw:
            raise StreamNotFound(stream)
        key = self._key(stream)
        dropped = raw.get("last_dropped")
        if after is not None and dropped and id_key(after) < id_key(dropped):
            kept = self._decode(await client.xrange(key, min="-", count=count))
            return [_gap(after, kept[0].id if kept else None, dropped), *kept][:count]
        if block_ms and raw.get("closed") != "1":
            got = await client.xread({key: after or "0-0"}, count=count, block=block_ms)
            return self._decode(got[0][1]) if got else []
        low = f"({after}" if after else "-"
        return self._decode(await client.xrange(key, min=low, count=count))

    def close(self, stream: str, data: dict[str, Any] | None = None) -> str:
        return self.append(stream, END, data or {})

    def request_cancel(self, stream: str) -> None:
        meta = self.meta(stream)
        if meta is None:
            raise StreamNotFound(stream)
        self._redis.set(self._key(stream, "cancel"), 1, ex=meta.ttl)

    def is_cancelled(self, stream: str) -> bool:
        return bool(self._redis.exists(self._key(stream, "cancel")))


_log: StreamLog | None = None
_log_lock = threading.Lock()


def get_log() -> StreamLog:
    """The process's log: Redis Streams with REDIS_URL, else the in-process log."""
    global _log
    with _log_lock:
        if _log is None:
            _log = (
                MemoryLog()
                if settings.EMBEDDED
                else RedisLog(settings.REDIS_URL, settings.REDIS_KEY_PREFIX)
            )
        return _log
