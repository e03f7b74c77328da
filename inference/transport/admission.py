"""Per-queue admission: at most N inference requests in flight per queue, then 503 at once.

A request holds a slot from before it is queued until its answer (or its deadline). Slots are
members of a Redis sorted set scored by deadline, so a web process that dies holding slots
leaks nothing: expired members are swept on every admission. Embedded: the same in a dict.
The unary path takes the slots of a whole web-side batch in one round trip
(:func:`admit_many`), and the worker frees them in the pipeline that publishes the batch's
answers (:func:`inference.transport.replies.batch_reply_publish`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from redis.exceptions import NoScriptError

from inference.transport.redis_client import client, key


class QueueFull(Exception):
    def __init__(self, queue: str, bound: int) -> None:
        super().__init__(f"queue {queue} has {bound} requests in flight")
        self.queue = queue
        self.bound = bound


def queue_bound(queue: str) -> int:
    return int(settings.INFERENCE_QUEUE_BOUNDS.get(queue, settings.INFERENCE_QUEUE_BOUND))


def admit(queue: str, request_id: str, deadline: float) -> None:
    """Take a slot on ``queue`` until ``deadline`` (wall clock) or :func:`release`."""
    if admit_many(queue, {request_id: deadline}):
        raise QueueFull(queue, queue_bound(queue))


def admit_many(
    queue: str,
    slots: dict[str, float],
    *,
    send: tuple[str, str] | None = None,
    before: Callable[[Any], object] | None = None,
) -> list[str]:
    """Take a slot on ``queue`` for each request id (until its deadline) in one step; the ids
    refused because the bound was reached (the last ones given), which hold no slot.

    On Redis, ``send`` — a broker list key and message (:func:`plumbing.redis_wire.redis_wire`) —
    is pushed in the same step when every slot was taken, and ``before`` adds commands of
    its own to the same round trip (they run first). The caller sends the message itself
    when some were refused."""
    if not slots:
        return []
    bound = queue_bound(queue)
    now = time.time()
    if settings.EMBEDDED:
        if send is not None or before is not None:
            raise ValueError("send and before need Redis")
        with _lock:
            held = _local.setdefault(queue, {})
            for rid in [r for r, until in held.items() if until <= now]:
                del held[rid]
            room = max(0, bound - len(held))
            ids = list(slots)
            for rid in ids[:room]:
                held[rid] = slots[rid]
            return ids[room:]
    ttl = max(60, int(max(slots.values()) - now) + 60)
    keys = [key("inflight", queue), send[0] if send else ""]
    args: list[str | float] = [now, bound, ttl, send[1] if send else ""]
    for request_id, deadline in slots.items():
        args += [request_id, deadline]
    for attempt in (1, 2):
        pipe = client().pipeline(transaction=False)
        if before is not None:
            before(pipe)
        # EVALSHA itself: a registered script in a pipeline costs a SCRIPT EXISTS round trip.
        pipe.evalsha(_admit_sha(), len(keys), *keys, *args)
        try:
            refused = pipe.execute()[-1]
        except NoScriptError:  # Redis restarted or flushed its scripts: load it, once more
            if attempt == 2:
                raise
            _admit_sha.cache_clear()
        else:
            return [r.decode() if isinstance(r, bytes) else str(r) for r in refused]
    raise AssertionError("unreachable")


# Sweep, admit while there is room (in the order given), and push the message when none was
# refused: one atomic step. KEYS: the in-flight set, the broker list (or ""). ARGV: now,
# bound, the set's TTL, the message (or ""), then request id, deadline pairs. Returns the
# refused ids.
_ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local room = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
local refused = {}
for i = 5, #ARGV, 2 do
  if room > 0 then
    room = room - redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  else
    refused[#refused + 1] = ARGV[i]
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if #refused == 0 and ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[4])
end
return refused
"""


@functools.cache
def _admit_sha() -> str:
    return str(client().script_load(_ADMIT))


def release_many(queue: str, request_ids: list[str]) -> None:
    if not request_ids:
        return
    if settings.EMBEDDED:
        with _lock:
            held = _local.get(queue, {})
            for rid in request_ids:
                held.pop(rid, None)
        return
    client().zrem(key("inflight", queue), *request_ids)


def release(queue: str, request_id: str) -> None:
    if settings.EMBEDDED:
        with _lock:
            _local.get(queue, {}).pop(request_id, None)
        return
    client().zrem(key("inflight", queue), request_id)


def in_flight(queue: str) -> int:
    now = time.time()
    if settings.EMBEDDED:
        with _lock:
            return sum(1 for until in _local.get(queue, {}).values() if until > now)
    return int(client().zcount(key("inflight", queue), f"({now}", "+inf"))


@contextmanager
def slot(queue: str, request_id: str, deadline: float) -> Iterator[None]:
    admit(queue, request_id, deadline)
    try:
        yield
    finally:
        release(queue, request_id)


_lock = threading.Lock()
_local: dict[str, dict[str, float]] = {}
