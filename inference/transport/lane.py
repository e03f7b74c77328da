"""The batch lane: the unary path's batch messages straight off Redis, inside the Celery worker.

A web process's batch of unary requests (:mod:`inference.transport.dispatch`) is one message.
It needs only redelivery of what Celery offers tasks in general (every item carries its own
deadline), so it skips Celery's consumer, whose per-message cost docs/performance.md measures.

So with ``INFERENCE_BATCH_LANE`` (on by default wherever ``REDIS_URL`` is set) the web process
pushes the batch as compact JSON onto the queue's lane list, in the same Lua round trip that
takes the batch's queue slots, and every Celery worker consuming an inference queue runs
:class:`Lane` (started by the :class:`BatchLane` worker bootstep): threads that ``BLMOVE`` a
message from the lane list onto the worker's own *held* list, run it through the worker's
batcher (:func:`inference.transport.replies.predict_batch`, as the Celery task does) and remove
it from the held list in the pipeline that answers the batch — one round trip on each side of
the model.

Redelivery, as ``task_acks_late`` with ``task_reject_on_worker_lost`` gives the Celery path:
a worker refreshes a heartbeat key while it lives and keeps its held lists in a set of all
workers' held lists; any worker moves the held lists of a worker whose heartbeat has expired
(it died mid-batch) back onto their lanes, every :data:`HEARTBEAT_SECONDS`, and a starting
worker takes back its own (a restarted worker keeps its name). A redelivered batch's items
whose deadlines have passed are dropped as any late item is.

Streams, shadow copies, jobs and every non-Redis setup still go through Celery tasks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import bootsteps
from celery import current_app as app
from django.conf import settings
from django.db import close_old_connections, connections
from redis.exceptions import RedisError

from inference.transport import replies
from inference.transport.redis_client import client, key

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0  # how often a worker says it lives (and sweeps dead workers' lists)
ALIVE_TTL_SECONDS = 30  # a worker silent this long is taken for dead
POP_TIMEOUT_SECONDS = 1.0  # how long an idle lane thread blocks before it looks at stop


def enabled() -> bool:
    """Whether web processes push unary batches onto the lane (workers always serve it where
    Redis is configured, so a lane message is never stranded by a mixed setting)."""
    if settings.EMBEDDED or not settings.INFERENCE_BATCH_LANE:
        return False
    return not app.conf.task_always_eager


def lane_key(queue: str) -> str:
    return key("lane", queue)


def held_key(queue: str, hostname: str) -> str:
    return key("lane-held", queue, hostname)


def alive_key(hostname: str) -> str:
    return key("lane-alive", hostname)


def workers_key() -> str:
    """The set of every lane worker's held lists (what the sweep looks at)."""
    return key("lane-workers")


def wire(
    version_id: int,
    queue: str,
    items: list[tuple[str, dict[str, Any], float]],
    reply_to: str,
    batch_id: str,
) -> tuple[str, str]:
    """The batch as the lane's list key and message."""
    message = {
        "version": version_id,
        "items": [list(item) for item in items],
        "reply_to": reply_to,
        "batch": batch_id,
    }
    return lane_key(queue), json.dumps(message)


def live_workers(queue: str) -> list[str]:
    """The workers serving ``queue`` now: registered for it and beating (every Celery worker
    that consumes an inference queue runs the lane where Redis is configured)."""
    redis = client()
    prefix = held_key(queue, "")
    hosts = []
    for name in redis.smembers(workers_key()):
        held = name.decode() if isinstance(name, bytes) else str(name)
        if held.startswith(prefix):
            hosts.append(held[len(prefix) :])
    if not hosts:
        return []
    pipe = redis.pipeline(transaction=False)
    for hostname in hosts:
        pipe.exists(alive_key(hostname))
    return [hostname for hostname, alive in zip(hosts, pipe.execute(), strict=True) if alive]


class Lane:
    """The lane threads of one worker process: ``threads`` per inference queue it consumes,
    a heartbeat and the sweep of dead workers' held lists."""

    def __init__(self, hostname: str, queues: Iterable[str], threads: int) -> None:
        self.hostname = hostname
        self.queues = sorted(set(queues))
        self.threads = max(1, threads)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if not self.queues:
            return
        try:
            self._beat()
            # A restarted worker (same name) takes back what its previous life held.
            self.sweep(include_own=True)
        except RedisError:  # the threads retry; the heartbeat registers the worker later
            log.exception("batch lane: Redis unreachable at start")
        for queue in self.queues:
            for n in range(self.threads):
                self._spawn(self._serve, queue, name=f"lane-{queue}-{n}")
        self._spawn(self._keep_alive, name="lane-heartbeat")
        log.info("batch lane: %d thread(s) on %s as %s", self.threads, self.queues, self.hostname)

    def stop(self, timeout: float = 10.0) -> None:
        """Let every thread finish the batch it holds, then stop. A batch still held when
        ``timeout`` runs out goes back to the lane at once, so another worker answers it."""
        self._stop.set()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        self._threads.clear()
        if not self.queues:
            return
        try:
            held = [held_key(queue, self.hostname) for queue in self.queues]
            for name, queue in zip(held, self.queues, strict=True):
                self._give_back(name, queue)
            pipe = client().pipeline(transaction=False)
            pipe.srem(workers_key(), *held)
            pipe.delete(alive_key(self.hostname))
            pipe.execute()
        except RedisError:
            log.exception("batch lane: leaving cleanly failed; the sweep of another worker will")

    def _spawn(self, target: Any, *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # --- serving ---------------------------------------------------------------------------

    def _serve(self, queue: str) -> None:
        source, held = lane_key(queue), held_key(queue, self.hostname)
        redis = client(blocking=True)
        try:
            while not self._stop.is_set():
                try:
                    raw = redis.blmove(source, held, POP_TIMEOUT_SECONDS, "RIGHT", "LEFT")
                except RedisError:
                    log.exception("batch lane: reading %s failed; retrying in a second", source)
                    self._stop.wait(1.0)
                    continue
                if raw is None:
                    continue
                try:
                    self.handle(queue, held, raw)
                    # As Celery's Django fixup does around a task: no connection outlives
                    # CONN_MAX_AGE or an error (loading a version reads the registry).
                    close_old_connections()
                except Exception:  # the thread lives on: the next batch may fare better
                    log.exception("batch lane: a batch on %s failed", queue)
        finally:
            connections.close_all()  # this thread's

    def handle(self, queue: str, held: str, raw: bytes) -> None:
        """Run one lane message; it leaves the held list with its answer (or at once when it
        cannot be read: a malformed message is logged and dropped, never retried)."""
        try:
            message = json.loads(raw)
            items = [
                (str(rid), payload, float(deadline)) for rid, payload, deadline in message["items"]
            ]
            version_id, reply_to, batch_id = (
                int(message["version"]),
                str(message["reply_to"]),
                str(message["batch"]),
            )
        except (ValueError, TypeError, KeyError):
            log.error("batch lane: dropped a malformed message on %s: %.200r", queue, raw)
            client().lrem(held, 1, raw)
            return
        try:
            replies.predict_batch(
                version_id=version_id,
                queue=queue,
                items=items,
                reply_to=reply_to,
                batch_id=batch_id,
                done=(held, raw),
            )
        except Exception:
            # predict_batch answers model failures itself; this is Redis failing under it (the
            # answer could not be sent). Its requests end at their deadlines (504); a second
            # run would not reach them any better.
            log.exception("batch lane: batch %s on %s failed", batch_id, queue)
            try:
                client().lrem(held, 1, raw)
            except RedisError:
                log.exception("batch lane: could not drop batch %s from %s", batch_id, held)

    # --- liveness and redelivery -------------------------------------------------------------

    def _beat(self) -> None:
        pipe = client().pipeline(transaction=False)
        pipe.set(alive_key(self.hostname), "1", ex=ALIVE_TTL_SECONDS)
        pipe.sadd(workers_key(), *[held_key(queue, self.hostname) for queue in self.queues])
        pipe.execute()

    def _keep_alive(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._beat()
                self.sweep()
            except RedisError:
                log.exception("batch lane: heartbeat failed")

    def sweep(self, *, include_own: bool = False) -> int:
        """Move the held lists of workers that stopped beating back onto their lanes; the
        number of messages moved."""
        redis = client()
        prefix = key("lane-held", "")
        moved = 0
        for name in redis.smembers(workers_key()):
            held = name.decode() if isinstance(name, bytes) else str(name)
            queue, _, hostname = held[len(prefix) :].rpartition(":")
            if hostname == self.hostname:
                if include_own:
                    moved += self._give_back(held, queue)
                continue
            if redis.exists(alive_key(hostname)):
                continue
            moved += self._give_back(held, queue)
            # Gone for good unless it comes back (a live worker re-registers at every beat).
            redis.srem(workers_key(), held)
        return moved

    def _give_back(self, held: str, queue: str) -> int:
        redis = client()
        moved = 0
        # Onto the end the lane threads pop next: redelivered batches go before new ones.
        while redis.lmove(held, lane_key(queue), "RIGHT", "RIGHT") is not None:
            moved += 1
        if moved:
            log.warning(
                "batch lane: %d batch(es) of %s back on the lane from %s", moved, queue, held
            )
        return moved


class BatchLane(bootsteps.StartStopStep):
    """The batch lane's threads (:class:`Lane`) in a worker that consumes inference
    queues, where Redis is configured: started once the pool is up, stopped before it."""

    requires = ("celery.worker.components:Pool",)

    def create(self, worker: Any) -> Any:
        consumed = worker.app.amqp.queues.consume_from or worker.app.amqp.queues
        queues = [name for name in consumed if name in settings.INFERENCE_QUEUES]
        if settings.EMBEDDED or not queues:
            return None
        return Lane(worker.hostname, queues, threads=worker.concurrency)
