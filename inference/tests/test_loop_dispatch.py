"""Batching on an event loop (inference.transport.dispatch.LoopCollector, the front door's): the
same batches, refusals and deadlines as the threads' collector, with futures instead of
threads. Real Redis; the worker's half is lane threads in this process."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from django.conf import settings

from inference.catalog.selectors import VersionRoute
from inference.tests.conftest import lane_queue, make_route, make_version
from inference.tests.fakes import Doubler
from inference.transport import admission, dispatch
from inference.transport.lane import held_key
from inference.transport.redis_client import client

pytestmark = pytest.mark.skipif(
    not settings.REDIS_URL, reason="the loop's batches travel on the Redis configuration's lane"
)


async def ask_on_loop(route: VersionRoute, x: int, timeout: float = 5) -> dict[str, Any] | None:
    """One request ``{"x": x}`` as the ASGI lane sends it."""
    rid = uuid.uuid4().hex
    pending = dispatch.call_on_loop(route, {"x": x}, request_id=rid, deadline=time.time() + timeout)
    reply = await dispatch.wait_on_loop(pending, timeout)
    if reply is None:
        dispatch.gave_up(route, pending)
    return reply


@pytest.mark.django_db(transaction=True)
def test_requests_on_a_loop_travel_in_batches_and_each_gets_its_answer(lanes) -> None:
    version = make_version(max_batch_size=8, max_delay_ms=1000)
    queue = lane_queue()
    worker = lanes(queue, threads=1)
    worker.start()
    route = make_route(version_id=version.pk, queue=queue, max_batch_size=8, max_delay_ms=1000)

    async def main() -> list[dict[str, Any] | None]:
        return list(await asyncio.gather(*(ask_on_loop(route, x) for x in range(20))))

    replies = asyncio.run(main())
    assert [r["output"] if r else None for r in replies] == [{"y": 2 * x} for x in range(20)]
    # The first goes alone (nothing in flight); the rest wait for it and go at most 8 at a
    # time: 20 requests in at most 4 messages, never more than max_batch_size in one.
    sizes = [len(batch) for batch in Doubler.batches]
    assert sum(sizes) == 20 and sizes[0] == 1 and max(sizes) <= 8 and len(sizes) <= 4, sizes
    assert client().llen(held_key(queue, worker.hostname)) == 0
    assert admission.in_flight(queue) == 0


@pytest.mark.django_db
def test_a_request_nobody_answers_gets_none_at_its_deadline_and_frees_its_slot(lanes) -> None:
    queue = lane_queue()
    lanes(queue)  # a lane whose worker never runs: the batch waits on its list
    route = make_route(version_id=1, queue=queue, max_delay_ms=0)

    async def main() -> tuple[dict[str, Any] | None, float]:
        started = time.monotonic()
        reply = await ask_on_loop(route, 1, timeout=0.3)
        return reply, time.monotonic() - started

    reply, took = asyncio.run(main())
    assert reply is None and 0.25 < took < 2
    assert admission.in_flight(queue) == 0


@pytest.mark.django_db
def test_a_full_queue_refuses_on_the_loop_without_sending(lanes, settings) -> None:
    queue = lane_queue()
    lanes(queue)
    settings.INFERENCE_QUEUE_BOUNDS = {queue: 1}
    admission.admit_many(queue, {"someone-else": time.time() + 10})
    route = make_route(version_id=1, queue=queue, max_delay_ms=0)
    try:
        with pytest.raises(admission.QueueFull):
            asyncio.run(ask_on_loop(route, 1))
        assert client().llen(f"{settings.REDIS_KEY_PREFIX}:inference:lane:{queue}") == 0
    finally:
        admission.release_many(queue, ["someone-else"])


@pytest.mark.django_db
def test_a_batch_that_cannot_be_sent_fails_its_requests_and_the_next_batch_still_goes(
    monkeypatch, lanes
) -> None:
    queue = lane_queue()
    lanes(queue)
    # A long window: a batch still counted in flight would hold the next one open.
    route = make_route(version_id=1, queue=queue, max_delay_ms=10_000)
    real = admission.admit_many
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("redis went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(admission, "admit_many", flaky)

    async def main() -> None:
        with pytest.raises(ConnectionError):
            await ask_on_loop(route, 1)
        await asyncio.sleep(0.01)  # the failed batch is let go on the loop's next turn
        # Nothing stays in flight for it: the next request goes at once.
        rid = uuid.uuid4().hex
        pending = dispatch.call_on_loop(route, {"x": 2}, request_id=rid, deadline=time.time() + 5)
        assert pending.error is None and len(calls) == 2
        dispatch.gave_up(route, pending)

    asyncio.run(main())
