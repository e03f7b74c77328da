"""The result channel: a worker publishes answers, the waiting views take them.

Per call (:func:`reply_publish` / :func:`reply_wait`; the pre-activation check of a version,
:mod:`inference.registry.checks`): a Redis list per call (RPUSH + EXPIRE, BLPOP), keys under
REDIS_KEY_PREFIX with a time to live so an answer nobody waits for any more disappears.
Embedded: a dict and a condition in this process (the worker is a thread of it).

Per batch (the unary path, :mod:`inference.transport.dispatch`): every web process has one reply
list of its own (:data:`inbox`); the worker answers a whole batch with one message on it
(:func:`batch_reply_publish`, which also frees the batch's queue slots in the same round trip),
and one reader thread per web process BLPOPs that list and wakes each waiting request thread.
So a request costs no Redis connection of its own while it waits, and a batch of N answers
costs one round trip on each side instead of N.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from inference.transport import admission
from inference.transport.redis_client import client, key
from inference.worker import predict

log = logging.getLogger(__name__)


def reply_publish(request_id: str, payload: dict[str, Any]) -> None:
    if settings.EMBEDDED:
        _local.publish(request_id, payload)
        return
    name = key("reply", request_id)
    pipe = client().pipeline()
    pipe.rpush(name, json.dumps(payload))
    pipe.expire(name, settings.INFERENCE_REPLY_TTL_SECONDS)
    pipe.execute()


def reply_wait(request_id: str, timeout: float) -> dict[str, Any] | None:
    """The answer for ``request_id``, or None if none came within ``timeout`` seconds."""
    if timeout <= 0:
        return None
    if settings.EMBEDDED:
        return _local.wait(request_id, timeout)
    found = client(blocking=True).blpop([key("reply", request_id)], timeout=timeout)
    if found is None:
        return None
    answer: dict[str, Any] = json.loads(found[1])
    return answer


class _LocalReplies:
    """In-process replies, dropped after INFERENCE_REPLY_TTL_SECONDS if nobody took them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._box: dict[str, tuple[float, dict[str, Any]]] = {}

    def publish(self, request_id: str, payload: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._cond:
            ttl = settings.INFERENCE_REPLY_TTL_SECONDS
            for stale in [k for k, (at, _) in self._box.items() if now - at > ttl]:
                del self._box[stale]
            self._box[request_id] = (now, payload)
            self._cond.notify_all()

    def wait(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        give_up = time.monotonic() + timeout
        with self._cond:
            while request_id not in self._box:
                left = give_up - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._box.pop(request_id)[1]


_local = _LocalReplies()


# --- per batch -------------------------------------------------------------------------------


def batch_reply_publish(
    reply_to: str,
    batch_id: str,
    replies: dict[str, dict[str, Any]],
    *,
    queue: str,
    release: list[str],
    done: tuple[str, bytes] | None = None,
) -> None:
    """Answer the requests of one batch (``reply_to`` empty: nobody waits, e.g. shadows),
    free the queue slots of ``release`` and take the batch lane's message (``done``: the held
    list and the message) off its worker's held list, in one round trip."""
    if settings.EMBEDDED:
        admission.release_many(queue, release)
        if reply_to:
            inbox.deliver(batch_id, replies)
        return
    pipe = client().pipeline(transaction=False)
    if reply_to:
        pipe.rpush(reply_to, json.dumps({"batch": batch_id, "replies": replies}))
        pipe.expire(reply_to, settings.INFERENCE_REPLY_TTL_SECONDS)
    if release:
        pipe.zrem(key("inflight", queue), *release)
    if done is not None:
        pipe.lrem(done[0], 1, done[1])
    pipe.execute()


class Signal:
    """A flag that is set once and wakes the threads waiting for it: ``threading.Event``'s
    contract for that use, on one lock taken at birth and released by :meth:`set`. An Event
    builds a Condition and, per wait, one more lock; the unary path made two per request, and
    their creation and wake-ups were a fifth of the web process's CPU
    (docs/performance-history.md)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # set already
            self._lock.release()

    def clear(self) -> None:
        """Unset it again (only the thread that waits for it may: a concurrent set wins or
        is seen by the caller's next look at what it waits for)."""
        self._lock.acquire(blocking=False)

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it is set, after waiting up to ``timeout`` seconds (None: for ever)."""
        if timeout is None:
            got = self._lock.acquire()
        else:
            got = self._lock.acquire(timeout=max(0.0, timeout))
        if got:
            self._lock.release()  # it stays set for every later wait
        return got


class Waiter:
    """One request thread waiting for its answer."""

    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = Signal()
        self.reply: dict[str, Any] | None = None


class LoopSignal:
    """:class:`Signal`'s ``set`` for a request awaited on an event loop: it resolves
    :attr:`future` on the loop, from whichever thread sets it (the reader thread, mostly)."""

    __slots__ = ("_loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            self._loop.call_soon_threadsafe(self.resolve)

    def resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class LoopWaiter(Waiter):
    """A request awaiting its answer on an event loop."""

    __slots__ = ()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.event = LoopSignal(loop)  # type: ignore[assignment]
        self.reply = None


class Inbox:
    """This process's reply channel for batches, and the request threads waiting on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, Waiter] = {}
        # batch id -> (called when its answer arrives, give up on it at this wall-clock time)
        self._batches: dict[str, tuple[Callable[[], None], float]] = {}
        self._pid = 0
        self._address = ""

    def address(self) -> str:
        """The reply list of this process (``reply_to`` of its batches). Starts the reader
        thread on first use in a process (also after a fork)."""
        if self._pid == os.getpid():
            return self._address
        with self._lock:
            if self._pid != os.getpid():
                self._waiters.clear()
                self._batches.clear()
                self._address = key("replies", f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
                if not settings.EMBEDDED:
                    threading.Thread(
                        target=self._read_forever,
                        args=(self._address, os.getpid()),
                        name="inference-replies",
                        daemon=True,
                    ).start()
                self._pid = os.getpid()
        return self._address

    def expect(self, request_id: str, waiter: Waiter | None = None) -> Waiter:
        self.address()  # a new process starts with an empty inbox, before this is added
        waiter = waiter if waiter is not None else Waiter()
        with self._lock:
            self._waiters[request_id] = waiter
        return waiter

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._waiters.pop(request_id, None)

    def expect_batch(self, batch_id: str, on_answer: Callable[[], None], until: float) -> None:
        """Call ``on_answer`` once when the batch's answer arrives, or after ``until`` (wall
        clock) if none does (a worker that dropped it, a message that expired)."""
        self._sweep()
        with self._lock:
            self._batches[batch_id] = (on_answer, until)

    def forget_batch(self, batch_id: str) -> None:
        with self._lock:
            gone = self._batches.pop(batch_id, None)
        if gone is not None:
            gone[0]()

    def deliver(self, batch_id: str, replies: dict[str, dict[str, Any]]) -> None:
        woken = []
        with self._lock:
            for rid, reply in replies.items():
                waiter = self._waiters.pop(rid, None)
                if waiter is not None:  # None: it gave up (504) already
                    waiter.reply = reply
                    woken.append(waiter)
            done = self._batches.pop(batch_id, None)
        for waiter in woken:
            waiter.event.set()
        if done is not None:
            done[0]()

    def _sweep(self) -> None:
        now = time.time()
        with self._lock:
            late = [b for b, (_, until) in self._batches.items() if until < now]
            calls = [self._batches.pop(b)[0] for b in late]
        for call in calls:
            call()

    def _read_forever(self, address: str, pid: int) -> None:
        conn = client(blocking=True)
        while os.getpid() == pid:
            try:
                found = conn.blpop([address], timeout=1)
                if found is not None:
                    message = json.loads(found[1])
                    self.deliver(message["batch"], message["replies"])
                self._sweep()
            except (RedisError, OSError):
                log.exception("reading inference replies failed; retrying")
                time.sleep(0.5)
            except Exception:  # a bad message must not end every later request's answer
                log.exception("bad inference reply message")


inbox = Inbox()


def predict_batch(
    *,
    version_id: int,
    queue: str,
    items: list[tuple[str, dict[str, Any], float]],
    reply_to: str,
    batch_id: str,
    done: tuple[str, bytes] | None = None,
) -> None:
    """Run a web process's batch (``(request_id, payload, deadline)`` each) on this worker
    (:func:`inference.worker.predict.run_batch`) and answer all of it in one message. Every
    item's queue slot is freed in the same round trip, as is the batch lane's held message
    (``done``: its list and bytes, :mod:`inference.transport.lane`). A shadow copy is such a
    batch too, answered to the web process that compares it."""
    replies = predict.run_batch(version_id=version_id, items=items)
    # Answered even when every item was dropped: the web process counts the batch as done.
    batch_reply_publish(
        reply_to,
        batch_id,
        replies,
        queue=queue,
        release=[rid for rid, _, _ in items],
        done=done,
    )
