"""Per-queue admission: at most N inference requests in flight per queue, then 503 at once.

A request holds a slot from before it is queued until its answer (or its deadline). Slots are
members of a Redis sorted set scored by deadline, so a web process that dies holding slots
leaks nothing: expired members are swept on every admission. Embedded: the same in a dict.
The unary path takes the slots of a whole web-side batch in one round trip
(:func:`admit_many`), and the worker frees them in the pipeline that publishes the batch's
answers (:func:`inference.replies.batch_reply_publish`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from inference.redis_client import client, key


class QueueFull(Exception):
    def __init__(self, queue: str, bound: int) -> None:
        super().__init__(f"queue {queue} has {bound} requests in flight")
        self.queue = queue
        self.bound = bound


def queue_bound(queue: str) -> int:
    return int(settings.INFERENCE_QUEUE_BOUNDS.get(queue, settings.INFERENCE_QUEUE_BOUND))


def admit(queue: str, request_id: str, deadline: float) -> None:
    """Take a slot on ``queue`` until ``deadline`` (wall clock) or :func:`release`."""
    bound = queue_bound(queue)
    now = time.time()
    if settings.EMBEDDED:
        with _lock:
            slots = _local.setdefault(queue, {})
            for rid in [r for r, until in slots.items() if until <= now]:
                del slots[rid]
            if len(slots) >= bound:
                raise QueueFull(queue, bound)
            slots[request_id] = deadline
        return
    name = key("inflight", queue)
    pipe = client().pipeline()  # MULTI/EXEC: sweep, add and count as one step
    pipe.zremrangebyscore(name, "-inf", now)
    pipe.zadd(name, {request_id: deadline})
    pipe.zcard(name)
    pipe.expire(name, max(60, int(deadline - now) + 60))
    count = pipe.execute()[2]
    if count > bound:
        client().zrem(name, request_id)
        raise QueueFull(queue, bound)


def admit_many(queue: str, slots: dict[str, float]) -> list[str]:
    """Take a slot on ``queue`` for each request id (until its deadline) in one step; the ids
    refused because the bound was reached (the last ones given), which hold no slot."""
    if not slots:
        return []
    bound = queue_bound(queue)
    now = time.time()
    if settings.EMBEDDED:
        with _lock:
            held = _local.setdefault(queue, {})
            for rid in [r for r, until in held.items() if until <= now]:
                del held[rid]
            room = max(0, bound - len(held))
            ids = list(slots)
            for rid in ids[:room]:
                held[rid] = slots[rid]
            return ids[room:]
    name = key("inflight", queue)
    pipe = client().pipeline()  # MULTI/EXEC: sweep, add and count as one step
    pipe.zremrangebyscore(name, "-inf", now)
    pipe.zadd(name, slots)
    pipe.zcard(name)
    pipe.expire(name, max(60, int(max(slots.values()) - now) + 60))
    over = pipe.execute()[2] - bound
    if over <= 0:
        return []
    refused = list(slots)[-over:]
    client().zrem(name, *refused)
    return refused


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
