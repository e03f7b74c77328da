from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from inference.worker.batcher import Batcher, DeadlineExceeded, run_isolating


class Recorder:
    def __init__(self, sleep: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.sleep = sleep
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.batches.append(list(items))
        if self.sleep:
            time.sleep(self.sleep)
        return [i * 10 for i in items]


def _fan_out(batcher: Batcher[int, int], n: int, **kw: float) -> list[tuple[int, int]]:
    barrier = threading.Barrier(n)

    def one(i: int) -> tuple[int, int]:
        barrier.wait()
        return batcher.submit(i, **kw)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def test_it_merges_concurrent_items_and_splits_results_back() -> None:
    run = Recorder(sleep=0.01)
    batcher = Batcher(run, max_batch_size=8, max_delay_ms=50)
    results = _fan_out(batcher, 24)
    assert [r for r, _ in results] == [i * 10 for i in range(24)]  # each caller gets its own
    assert sorted(i for b in run.batches for i in b) == list(range(24))  # each item ran once
    assert all(len(b) <= 8 for b in run.batches)
    assert len(run.batches) < 24  # merged, not one call per item
    assert max(size for _, size in results) > 1


def test_it_never_exceeds_max_batch_size_under_load() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch_size=3, max_delay_ms=20)
    _fan_out(batcher, 30)
    assert max(len(b) for b in run.batches) <= 3
    assert sum(len(b) for b in run.batches) == 30


def test_it_runs_a_lone_item_after_max_delay() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch_size=64, max_delay_ms=30)
    started = time.monotonic()
    assert batcher.submit(4) == (40, 1)
    waited = time.monotonic() - started
    assert 0.025 <= waited < 0.5


def test_it_runs_at_once_when_the_batch_is_full() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch_size=4, max_delay_ms=5_000)
    started = time.monotonic()
    _fan_out(batcher, 4)
    assert time.monotonic() - started < 2  # did not wait for the 5 s delay
    assert [len(b) for b in run.batches] == [4]


def test_it_gives_a_batch_error_to_every_caller() -> None:
    def explode(items: list[int]) -> list[int]:
        raise ValueError("bad batch")

    batcher: Batcher[int, int] = Batcher(explode, max_batch_size=4, max_delay_ms=20)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            batcher.submit(i)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(errors) == 6


def test_it_rejects_a_result_count_mismatch() -> None:
    batcher: Batcher[int, int] = Batcher(lambda items: [], max_batch_size=2, max_delay_ms=1)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        batcher.submit(1)


def test_it_drops_expired_items_without_running_them() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch_size=8, max_delay_ms=1)
    with pytest.raises(DeadlineExceeded):
        batcher.submit(1, deadline=time.time() - 1)
    assert run.batches == []
    assert batcher.items_dropped == 1
    assert batcher.submit(2, deadline=time.time() + 10) == (20, 1)


def test_it_drops_items_that_expire_while_waiting_for_the_batch() -> None:
    run = Recorder()
    batcher = Batcher(run, max_batch_size=8, max_delay_ms=200)
    with pytest.raises(DeadlineExceeded):
        batcher.submit(1, deadline=time.time() + 0.05)
    assert run.batches == []


def test_it_keeps_serving_after_a_leader_finishes_someone_elses_batch() -> None:
    run = Recorder(sleep=0.02)
    batcher = Batcher(run, max_batch_size=2, max_delay_ms=1)
    results = _fan_out(batcher, 9)
    assert sorted(r for r, _ in results) == [i * 10 for i in range(9)]


def _picky(calls: list[list[int]]):
    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise IndexError("index out of range in self")
        return [i * 10 for i in items]

    return run


def test_an_input_that_fails_the_engine_fails_alone_and_the_rest_are_answered() -> None:
    calls: list[list[int]] = []
    batcher: Batcher[int, int] = Batcher(_picky(calls), max_batch_size=16, max_delay_ms=1)
    outcomes = batcher.submit_many(list(range(16)), deadlines=[None] * 16)
    assert [result for result, _, _ in outcomes if result is not None] == [
        i * 10 for i in range(16) if i != 13
    ]
    [failed] = [error for _, error, _ in outcomes if error is not None]
    assert isinstance(failed, IndexError) and outcomes[13][1] is failed
    # Halving finds it: the whole batch, then two runs per level down to the one item.
    assert len(calls) == 1 + 2 * 4
    assert outcomes[0][2] == 8 and outcomes[12][2] == 1  # each answer says where it ran


def test_an_error_the_isolation_refuses_goes_to_every_item_at_once() -> None:
    calls: list[list[int]] = []
    outcomes = run_isolating(_picky(calls), [1, 13, 3], isolate=lambda exc: False)
    assert [error is not None for _, error, _ in outcomes] == [True, True, True]
    assert len(calls) == 1  # the engine is not asked again
