"""Batching before the queue: the web process sends one Celery message per batch, not per
request.

Request threads asking for the same version meet in that version's :class:`Collector`. The
first becomes the *leader*: it holds the batch open while it fills, then takes the batch's
queue slots in one round trip, sends one ``inference_predict_batch`` message carrying every
request (each with its own id and deadline) and hands leadership to the next waiting thread.
The other threads only append and wait for their own answer, which the worker sends back for
the whole batch at once (:class:`inference.transport.replies.Inbox`).

How long a batch stays open adapts to load: not at all while no batch of this version from
this process is being computed (a lone request goes at once, so batching costs nothing at low
load), otherwise until ``max_batch_size`` requests are waiting, the oldest has waited
``max_delay_ms``, or the version's worker answers the previous batch — whichever comes first.
The worker's own batcher still merges the batches of several web processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from inference.catalog.selectors import VersionRoute
from inference.transport import admission, lane
from inference.transport.redis_client import client
from inference.transport.replies import LoopSignal, LoopWaiter, Waiter, inbox
from plumbing.redis_wire import redis_wire
from plumbing.taskref import task_named
from tenants.limits import PlanTicket, settle

log = logging.getLogger(__name__)

PREDICT_BATCH = "inference_predict_batch"  # the task (inference.tasks), sent by name


class Pending:
    """One request on its way into a batch (``ticket``: its limits, counted with the batch).

    Its thread waits on one signal — its waiter's — for whatever comes first: the answer, a
    refusal (``error``), or its turn to lead the next batch (``turn``). Sending the batch
    wakes nobody: a wake-up costs a context switch on a busy core, and the answer is what
    the thread waits for."""

    __slots__ = (
        "arrived",
        "collector",
        "deadline",
        "error",
        "payload",
        "request_id",
        "sent",
        "ticket",
        "turn",
        "waiter",
    )

    def __init__(
        self,
        request_id: str,
        payload: dict[str, Any],
        deadline: float,
        ticket: PlanTicket | None = None,
        waiter: Waiter | None = None,
    ) -> None:
        self.request_id = request_id
        self.payload = payload
        self.deadline = deadline
        self.ticket = ticket
        self.waiter = waiter if waiter is not None else Waiter()
        self.arrived = time.monotonic()
        self.error: BaseException | None = None
        self.turn = False  # set (under the collector's lock) when this thread leads next
        self.collector: Collector | None = None
        # The list and message its batch was pushed as (None: Celery published it).
        self.sent: tuple[str, str] | None = None

    def wait(self, timeout: float) -> dict[str, Any] | None:
        """The answer, or None when ``timeout`` seconds pass first; raises what refused the
        request. Leads a batch when it is this thread's turn."""
        end = time.monotonic() + timeout
        waiter = self.waiter
        while True:
            # Looked at after every wake-up and clear: a set() before the clear left its
            # field behind, one after it leaves the signal set.
            if self.error is not None:
                raise self.error
            if waiter.reply is not None:
                return waiter.reply
            collector = self.collector
            if self.turn and collector is not None:
                self.turn = False
                collector.lead()
                continue
            if waiter.event.wait(end - time.monotonic()):
                waiter.event.clear()
                continue
            # Time is up. An answer or a refusal that came as the wait ended is taken at the
            # top; so is the turn, if it was handed over just now: the requests behind would
            # wait for ever otherwise (led with this deadline spent, it gives up after).
            if (
                waiter.reply is None
                and self.error is None
                and (collector is None or not collector.withdraw(self))
            ):
                return None


class Collector:
    """The open batch of one version in this process."""

    def __init__(self, *, version_id: int, queue: str, max_batch_size: int, max_delay_ms: int):
        self.version_id = version_id
        self.queue = queue
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay = max(0, max_delay_ms) / 1000
        self._lock = threading.Lock()
        self._fill = threading.Condition(self._lock)  # only the leader waits on it
        self._open: list[Pending] = []
        self._leading = False
        self._in_flight = 0  # batches sent and not answered yet
        self.batches_sent = 0
        self.requests_sent = 0

    def submit(self, pending: Pending) -> None:
        """Put ``pending`` in the open batch. The first thread to arrive while nobody leads
        leads at once and returns once its batch has gone (or refused it: ``pending.error``);
        the others return at once and wait with :meth:`Pending.wait`."""
        pending.collector = self
        with self._lock:
            self._open.append(pending)
            if self._leading:
                if len(self._open) >= self.max_batch_size:
                    self._fill.notify()
                return
            self._leading = True
        # This thread leads: its request is the oldest open one, so it goes in this batch.
        self.lead()

    def withdraw(self, pending: Pending) -> bool:
        """A request gives up before an answer: take it out of the open batch. True when it
        must lead first (it was handed the turn: the requests behind it would wait for
        ever otherwise)."""
        with self._lock:
            if pending.turn:
                return True
            if pending in self._open:
                self._open.remove(pending)
            return False

    def lead(self) -> None:
        """Send the next batch (the caller's request is its oldest) and hand the turn on."""
        with self._lock:
            close_at = self._open[0].arrived + self.max_delay
            while len(self._open) < self.max_batch_size and self._in_flight > 0:
                left = close_at - time.monotonic()
                if left <= 0:
                    break
                self._fill.wait(left)
            batch = self._open[: self.max_batch_size]
            del self._open[: self.max_batch_size]
            # Counted from now, so the next leader already holds its batch open for more.
            self._in_flight += 1
            successor = self._open[0] if self._open else None
            if successor is None:
                self._leading = False
            else:
                successor.turn = True
        if successor is not None:
            successor.waiter.event.set()  # not sent: it leads the next batch
        sent = False
        try:
            sent = self._send(batch)
        except BaseException as exc:  # every request of the batch hears of it
            for pending in batch:
                pending.error = pending.error or exc
            raise
        finally:
            if not sent:
                self._answered()
            for pending in batch:
                if pending.error is not None:
                    pending.waiter.event.set()

    def _send(self, batch: list[Pending]) -> bool:
        """Whether a message went (then the inbox calls :meth:`_answered` for it)."""
        now = time.time()
        # A request whose deadline passed while it waited is not sent; its thread answers 504.
        live = [p for p in batch if p.deadline > now]
        live = self._count_limits(live)
        if not live:
            return False
        batch_id = uuid.uuid4().hex
        items = [(p.request_id, p.payload, p.deadline) for p in live]
        # Expected before anything is sent: the answer may come back at once.
        inbox.expect_batch(batch_id, self._answered, max(p.deadline for p in live))
        try:
            # On Redis the message goes with the queue slots, in their round trip, when every
            # request of the batch gets one (the common case); else it goes below.
            wire = batch_wire(self.version_id, self.queue, items, inbox.address(), batch_id)
            refused = set(
                admission.admit_many(
                    self.queue, {p.request_id: p.deadline for p in live}, send=wire
                )
            )
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets it (503)
            inbox.forget_batch(batch_id)  # calls _answered
            for p in live:
                p.error = exc
            return True
        if refused:
            full = admission.QueueFull(self.queue, admission.queue_bound(self.queue))
            for p in live:
                if p.request_id in refused:
                    p.error = full
            live = [p for p in live if p.request_id not in refused]
            items = [item for item in items if item[0] not in refused]
            if not live:
                inbox.forget_batch(batch_id)
                return True
        if wire is not None and not refused:
            for p in live:
                p.sent = wire
        if wire is None or refused:
            try:
                # The rest of a partly refused batch goes as the whole would have: pushed (onto
                # the batch lane, or as the task's message) where the script pushes, else by
                # Celery.
                rest = None
                if wire is not None:
                    rest = batch_wire(self.version_id, self.queue, items, inbox.address(), batch_id)
                if rest is not None:
                    client().lpush(*rest)
                    for p in live:
                        p.sent = rest
                else:
                    enqueue_batch(
                        version_id=self.version_id,
                        queue=self.queue,
                        items=items,
                        reply_to=inbox.address(),
                        batch_id=batch_id,
                    )
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets it (503)
                inbox.forget_batch(batch_id)  # calls _answered
                for p in live:
                    p.error = exc
                try:
                    admission.release_many(self.queue, [p.request_id for p in live])
                except Exception:
                    log.exception("freeing the slots of an unsent batch failed")
                return True
        self.batches_sent += 1
        self.requests_sent += len(live)
        return True

    @staticmethod
    def _count_limits(live: list[Pending]) -> list[Pending]:
        """Count the batch's limit tickets in one round trip; the requests a limit refuses
        (``pending.error``: 429, or 503 when the counters are unreachable and failing closed)
        take no queue slot."""
        tickets = [p for p in live if p.ticket is not None]
        if not tickets:
            return live
        try:
            settle([p.ticket for p in tickets if p.ticket is not None])
        except Exception as exc:  # noqa: BLE001 - every counted request gets it (503)
            for p in tickets:
                p.error = exc
        else:
            for p in tickets:
                if p.ticket is not None and p.ticket.refusal is not None:
                    p.error = p.ticket.refusal
        return [p for p in live if p.error is None]

    def _answered(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight <= 0:
                self._in_flight = 0
                self._fill.notify()  # the worker is free: send what is open now


class LoopCollector(Collector):
    """The open batch of one version for the requests of an event loop (the unary
    front door, :mod:`inference.api.frontdoor`): the same batches, limits and message as
    :class:`Collector`, with the loop in the leader's place. A request joins the open batch
    in a loop callback; the batch goes at once while none of the version's is being
    computed, else when it is full, when its oldest request has waited ``max_delay_ms`` (a
    loop timer) or when the previous batch is answered. Sending it (one Redis round trip per
    batch) runs on the loop; the answers wake the requests' futures, not threads."""

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        version_id: int,
        queue: str,
        max_batch_size: int,
        max_delay_ms: int,
    ):
        super().__init__(
            version_id=version_id,
            queue=queue,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
        )
        self.loop = loop
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, pending: Pending) -> None:
        """Put ``pending`` in the open batch (on the loop); refusals land in
        ``pending.error`` with its signal set."""
        pending.collector = self
        self._open.append(pending)
        if self._in_flight == 0 or len(self._open) >= self.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._arm()

    def withdraw(self, pending: Pending) -> bool:
        if pending in self._open:
            self._open.remove(pending)
        return False

    def _arm(self) -> None:
        wait = self._open[0].arrived + self.max_delay - time.monotonic()
        self._timer = self.loop.call_later(max(0.0, wait), self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._open:
            batch = self._open[: self.max_batch_size]
            del self._open[: self.max_batch_size]
            self._in_flight += 1
            sent = False
            try:
                sent = self._send(batch)
            except Exception as exc:
                log.exception("sending a batch of version %s failed", self.version_id)
                for pending in batch:
                    pending.error = pending.error or exc
            finally:
                if not sent:
                    self._in_flight -= 1
                for pending in batch:
                    if pending.error is not None:
                        pending.waiter.event.set()
            if self._in_flight > 0 and len(self._open) < self.max_batch_size:
                break
        if self._open:
            self._arm()

    def _answered(self) -> None:
        # From the reply reader's thread (or the loop, for a batch that could not go).
        with contextlib.suppress(RuntimeError):  # the loop closed: nothing waits any more
            self.loop.call_soon_threadsafe(self._freed)

    def _freed(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        if self._in_flight == 0 and self._open:
            self._flush()


def _batch_task(
    version_id: int,
    queue: str,
    items: list[tuple[str, dict[str, Any], float]],
    reply_to: str,
    batch_id: str,
    shadow: bool,
) -> dict[str, Any]:
    """The ``apply_async`` options of a batch message (``args`` included)."""
    return {
        "args": (version_id, queue, [list(item) for item in items], reply_to, batch_id),
        "queue": queue,
        # Kept past the deadlines by the load allowance: a batch queued behind its model's load
        # still runs (the worker drops late items itself once the model is loaded).
        "expires": max(1.0, max(item[2] for item in items) - time.time())
        + settings.INFERENCE_LOAD_ALLOWANCE_SECONDS,
        # What monitors (events, Flower, the worker's log) show instead of the inputs: they
        # may be private, and Celery's repr of a batch cost ~150 µs per message.
        "argsrepr": f"(version={version_id}, requests={len(items)}, batch={batch_id})",
        "kwargsrepr": repr({"shadow": True}) if shadow else "{}",
    }


def batch_wire(
    version_id: int,
    queue: str,
    items: list[tuple[str, dict[str, Any], float]],
    reply_to: str,
    batch_id: str,
) -> tuple[str, str] | None:
    """The batch's message as a list key and bytes, for a push in a round trip made anyway:
    onto the batch lane (:mod:`inference.transport.lane`) where it runs, else the Celery task's
    message (:func:`plumbing.redis_wire.redis_wire`); None where Celery must publish it."""
    if lane.enabled():
        return lane.wire(version_id, queue, items, reply_to, batch_id)
    options = _batch_task(version_id, queue, items, reply_to, batch_id, False)
    return redis_wire(task_named(PREDICT_BATCH), options.pop("args"), task_id=batch_id, **options)


def enqueue_batch(
    *,
    version_id: int,
    queue: str,
    items: list[tuple[str, dict[str, Any], float]],
    reply_to: str,
    batch_id: str,
    shadow: bool = False,
) -> None:
    """One message for many requests on the version's queue; Celery discards it once the
    last deadline has passed, so a backlog never spends worker time on answers nobody waits
    for."""
    task_named(PREDICT_BATCH).apply_async(
        kwargs={"shadow": shadow} if shadow else {},
        task_id=batch_id,
        # Straight to the queue's list (the default exchange) without re-declaring the queue
        # on every message: workers declare the queues they consume.
        declare=[],
        **_batch_task(version_id, queue, items, reply_to, batch_id, shadow),
    )


_collectors: dict[tuple[int, str, int, int], Collector] = {}


def _collector_key(route: VersionRoute) -> tuple[int, str, int, int]:
    """A version whose queue or batching settings changed gets a new collector."""
    return (route.id, route.queue, route.max_batch_size, route.max_delay_ms)


_collectors_lock = threading.Lock()


def collector(route: VersionRoute) -> Collector:
    """The collector of a version; a version whose queue or batching settings changed gets
    a new one."""
    name = _collector_key(route)
    found = _collectors.get(name)
    if found is None:
        with _collectors_lock:
            found = _collectors.get(name)
            if found is None:
                found = _collectors[name] = Collector(
                    version_id=route.id,
                    queue=route.queue,
                    max_batch_size=route.max_batch_size,
                    max_delay_ms=route.max_delay_ms,
                )
    return found


def call(
    route: VersionRoute,
    payload: dict[str, Any],
    *,
    request_id: str,
    deadline: float,
    ticket: PlanTicket | None = None,
) -> Pending:
    """Put one request into its version's next batch and return it: :meth:`Pending.wait`
    gives the answer, or raises what refused the request (QueueFull, a limit of ``ticket``, a
    broker or Redis error) — as this call may, when its thread led the batch. ``ticket``: the
    request's limits, not counted yet — they are counted with the batch, one round trip for
    all of its requests (the front door)."""
    pending = Pending(request_id, payload, deadline, ticket, inbox.expect(request_id))
    try:
        collector(route).submit(pending)
    except BaseException:
        inbox.forget(request_id)
        raise
    if pending.error is not None:
        inbox.forget(request_id)
        raise pending.error
    return pending


def wait(pending: Pending, timeout: float) -> dict[str, Any] | None:
    """:meth:`Pending.wait`, forgetting the request in the inbox when it was refused."""
    try:
        return pending.wait(timeout)
    except BaseException:
        inbox.forget(pending.request_id)
        raise


_loop_collectors: dict[tuple[int, str, int, int], LoopCollector] = {}


def call_on_loop(
    route: VersionRoute,
    payload: dict[str, Any],
    *,
    request_id: str,
    deadline: float,
    ticket: PlanTicket | None = None,
) -> Pending:
    """:func:`call` for a request on the running event loop; await :func:`wait_on_loop`."""
    loop = asyncio.get_running_loop()
    name = _collector_key(route)
    found = _loop_collectors.get(name)
    if found is None or found.loop is not loop:
        found = _loop_collectors[name] = LoopCollector(
            loop=loop,
            version_id=route.id,
            queue=route.queue,
            max_batch_size=route.max_batch_size,
            max_delay_ms=route.max_delay_ms,
        )
    pending = Pending(
        request_id, payload, deadline, ticket, inbox.expect(request_id, LoopWaiter(loop))
    )
    found.submit(pending)
    return pending


async def wait_on_loop(pending: Pending, timeout: float) -> dict[str, Any] | None:
    """The answer of a request of :func:`call_on_loop`, or None when ``timeout`` seconds
    pass first; raises what refused it."""
    signal = pending.waiter.event
    assert isinstance(signal, LoopSignal)
    if signal.future.done() and pending.error is None and pending.waiter.reply is None:
        # A second wait (the load allowance, inference.serving): the first one's timer
        # resolved the future; the answer resolves a new one.
        signal.future = signal.future.get_loop().create_future()
    if pending.error is None and pending.waiter.reply is None:
        timer = signal.future.get_loop().call_later(max(0.0, timeout), signal.resolve)
        try:
            await signal.future
        finally:
            timer.cancel()
    if pending.error is not None:
        inbox.forget(pending.request_id)
        raise pending.error
    if pending.waiter.reply is None and pending.collector is not None:
        pending.collector.withdraw(pending)
    return pending.waiter.reply


def gave_up(route: VersionRoute, pending: Pending) -> bool:
    """The request stopped waiting (deadline): forget it and free its slot now, not when its
    late answer (if any) comes. Whether no worker ever took it: its batch's message is still
    on the list it was pushed to (no worker served the queue in time — an outage of the queue,
    not of the version). False where that cannot be told (a message Celery published)."""
    inbox.forget(pending.request_id)
    try:
        admission.release(route.queue, pending.request_id)
    except Exception:
        log.exception("freeing the slot of a timed-out request failed")
    if pending.sent is None:
        return False
    name, message = pending.sent
    try:
        return client().lpos(name, message) is not None
    except RedisError:
        log.exception("looking for the message of a timed-out request failed")
        return False


def shadow_copy(
    route: VersionRoute, payload: dict[str, Any], deadline: float, *, rid: str, reply_to: str
) -> bool:
    """Best effort: a full queue or a broker error skips the copy, never the real request.
    The worker answers it on ``reply_to`` with ``rid`` as its batch id (the web process
    compares it with the primary's answer, :mod:`inference.transport.shadows`) and frees the slot.
    Whether the copy went."""
    try:
        if admission.admit_many(route.queue, {rid: deadline}):
            log.info("shadow copy to version %s skipped: queue full", route.id)
            return False
    except Exception:
        log.exception("shadow copy to version %s skipped: admission store unreachable", route.id)
        return False
    try:
        enqueue_batch(
            version_id=route.id,
            queue=route.queue,
            items=[(rid, payload, deadline)],
            reply_to=reply_to,
            batch_id=rid,
            shadow=True,
        )
    except Exception:
        log.exception("shadow copy to version %s failed", route.id)
        admission.release_many(route.queue, [rid])
        return False
    return True
