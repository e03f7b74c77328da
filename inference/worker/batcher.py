"""Dynamic batching for threads: concurrent callers' items are merged into one batch.

A worker runs inference tasks on a thread pool; each task thread calls :meth:`Batcher.submit`
and blocks. There is no batching thread of its own: the first waiting caller becomes the
*leader*, waits until ``max_batch_size`` items are pending or ``max_delay_ms`` has passed since
the oldest one arrived, runs the whole batch with one call and hands every caller its own
result. Items whose deadline has passed are dropped before the batch runs, never computed.

:meth:`Batcher.submit_many` hands in items that were already collected (the web process batches
before the queue, :mod:`inference.transport.dispatch`): they do not wait for more, but still merge
with whatever else is pending, up to ``max_batch_size``.

When a batch raises, it is split in halves and each half run again, down to single items
(:func:`run_isolating`): an input that makes the engine fail fails alone, with its own error,
and the other requests of its batch get their answers.

Nothing here knows about Celery or Django.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class DeadlineExceeded(Exception):
    """The item's deadline passed before its batch ran; it was not computed."""


def run_isolating(
    run_batch: Callable[[list[In]], list[Out]],
    items: list[In],
    isolate: Callable[[BaseException], bool] | None = None,
) -> list[tuple[Out | None, BaseException | None, int]]:
    """Run ``items`` as one batch; per item (result, error, size of the batch it ran in).

    When the batch raises an error that ``isolate`` accepts (default: any), its halves are
    run again, recursively, down to single items: k failing inputs among n cost about
    ``2k·log2(n)`` extra calls, and every other item still gets its result. An error
    ``isolate`` refuses (an engine that cannot run at all) goes to every item at once.
    """
    try:
        results = run_batch(items)
        if len(results) != len(items):
            raise RuntimeError(f"runtime returned {len(results)} results for {len(items)} items")
    except Exception as exc:  # noqa: BLE001 - isolated below, or delivered to every item
        if len(items) == 1 or (isolate is not None and not isolate(exc)):
            return [(None, exc, len(items))] * len(items)
        middle = len(items) // 2
        return run_isolating(run_batch, items[:middle], isolate) + run_isolating(
            run_batch, items[middle:], isolate
        )
    return [(result, None, len(items)) for result in results]


class _Slot(Generic[In, Out]):
    __slots__ = ("batch_size", "close_at", "deadline", "done", "error", "item", "result")

    def __init__(self, item: In, deadline: float | None, close_at: float) -> None:
        self.item = item
        self.deadline = deadline
        self.close_at = close_at  # monotonic: its batch runs by then even if not full
        self.done = False
        self.result: Out | None = None
        self.error: BaseException | None = None
        self.batch_size = 0


class Batcher(Generic[In, Out]):
    """Merge concurrent :meth:`submit` calls into batches for ``run_batch``.

    ``run_batch`` gets a list of items and must return one result per item, in order; if it
    raises, the batch is split to find the failing items (:func:`run_isolating`, with
    ``isolate``), and each of those callers gets its own exception.
    """

    def __init__(
        self,
        run_batch: Callable[[list[In]], list[Out]],
        *,
        max_batch_size: int = 8,
        max_delay_ms: float = 5.0,
        clock: Callable[[], float] = time.time,
        isolate: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay = max(0.0, max_delay_ms) / 1000
        self.clock = clock  # wall clock, for deadlines that crossed a process boundary
        self.isolate = isolate
        self._cond = threading.Condition()
        self._pending: list[_Slot[In, Out]] = []
        self._leading = False
        self.batches_run = 0
        self.items_dropped = 0

    def submit(self, item: In, *, deadline: float | None = None) -> tuple[Out, int]:
        """Run ``item`` in some batch; its result and the size of the batch it ran in.

        ``deadline`` is a wall-clock (``time.time()``) instant; past it the item is dropped
        and :class:`DeadlineExceeded` raised.
        """
        slot: _Slot[In, Out] = _Slot(item, deadline, time.monotonic() + self.max_delay)
        self._run([slot])
        if slot.error is not None:
            raise slot.error
        return slot.result, slot.batch_size  # type: ignore[return-value]

    def submit_many(
        self, items: list[In], *, deadlines: list[float | None]
    ) -> list[tuple[Out | None, BaseException | None, int]]:
        """Run already-collected items without waiting for more; per item (result, error,
        batch size), in order. An item past its deadline gets a :class:`DeadlineExceeded`."""
        now = time.monotonic()
        slots: list[_Slot[In, Out]] = [
            _Slot(item, deadline, now) for item, deadline in zip(items, deadlines, strict=True)
        ]
        self._run(slots)
        return [(slot.result, slot.error, slot.batch_size) for slot in slots]

    def _run(self, slots: list[_Slot[In, Out]]) -> None:
        """Queue ``slots`` and lead batches until every one of them is done."""
        with self._cond:
            self._pending.extend(slots)
            self._cond.notify_all()
        last = slots[-1]
        while True:
            with self._cond:
                while not last.done and self._leading:
                    self._cond.wait()
                if last.done:
                    break
                self._leading = True
            try:
                self._lead()
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()

    def _lead(self) -> None:
        """Collect one batch (full, or the oldest item's delay spent), run it, deliver."""
        with self._cond:
            if not self._pending:
                return
            close_at = min(slot.close_at for slot in self._pending[: self.max_batch_size])
            while len(self._pending) < self.max_batch_size:
                left = close_at - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._pending[: self.max_batch_size]
            del self._pending[: self.max_batch_size]
        now = self.clock()
        live: list[_Slot[In, Out]] = []
        for slot in batch:
            if slot.deadline is not None and slot.deadline <= now:
                slot.error = DeadlineExceeded("deadline passed before the batch ran")
                self.items_dropped += 1
            else:
                live.append(slot)
        if live:
            outcomes = run_isolating(self.run_batch, [slot.item for slot in live], self.isolate)
            for slot, (result, error, size) in zip(live, outcomes, strict=True):
                slot.result, slot.error, slot.batch_size = result, error, size
            self.batches_run += 1
        with self._cond:
            for slot in batch:
                slot.done = True
            self._cond.notify_all()
