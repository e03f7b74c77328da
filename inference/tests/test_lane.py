"""The batch lane (inference/transport/lane.py): unary batches off a Redis list, held while they
run, given back when their worker dies. Real Redis; the worker's half runs in this process."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.conf import settings

from inference.tests.conftest import ask, lane_queue, make_route, make_version
from inference.tests.fakes import Doubler
from inference.transport import admission, dispatch, lane
from inference.transport.lane import Lane, alive_key, held_key, lane_key
from inference.transport.redis_client import client
from inference.transport.replies import inbox

pytestmark = pytest.mark.skipif(
    not settings.REDIS_URL, reason="the batch lane is the Redis configuration's"
)


def _take(queue: str, worker: Lane) -> bytes:
    """What a lane thread of ``worker`` does first: the next message, onto its held list."""
    raw = client(blocking=True).blmove(
        lane_key(queue), held_key(queue, worker.hostname), 5, "RIGHT", "LEFT"
    )
    assert raw is not None
    return bytes(raw)


@pytest.mark.django_db
def test_a_batch_goes_onto_the_lane_with_its_slots_and_leaves_the_held_list_answered(
    monkeypatch, lanes
) -> None:
    def celery_publish(**kwargs: Any) -> None:
        raise AssertionError("published through Celery")

    monkeypatch.setattr(dispatch, "enqueue_batch", celery_publish)
    assert lane.enabled()
    version = make_version(max_batch_size=8, max_delay_ms=1000)
    queue = lane_queue()
    worker = lanes(queue)
    with ThreadPoolExecutor(max_workers=1) as pool:
        asked = pool.submit(
            ask, make_route(version_id=version.pk, queue=queue, max_delay_ms=1000), 21
        )
        raw = _take(queue, worker)
        message = json.loads(raw)
        assert message["version"] == version.pk and len(message["items"]) == 1
        assert admission.in_flight(queue) == 1  # its slot was taken with the push
        worker.handle(queue, held_key(queue, worker.hostname), raw)  # in this thread (the db)
        reply = asked.result(timeout=5)
    assert reply is not None and reply["output"] == {"y": 42} and reply["batch_size"] == 1
    assert client().llen(held_key(queue, worker.hostname)) == 0  # gone with the answer
    assert admission.in_flight(queue) == 0
    assert Doubler.batches == [[21]]


@pytest.mark.django_db(transaction=True)
def test_lane_threads_serve_concurrent_requests_in_batches(lanes) -> None:
    version = make_version(max_batch_size=8, max_delay_ms=1000)
    queue = lane_queue()
    worker = lanes(queue, threads=2)
    worker.start()
    route = make_route(version_id=version.pk, queue=queue, max_delay_ms=1000)
    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(pool.map(lambda x: ask(route, x), range(12)))
    assert [r["output"] for r in replies if r] == [{"y": 2 * x} for x in range(12)]
    assert sum(len(b) for b in Doubler.batches) == 12
    assert len(Doubler.batches) < 12  # requests travelled together
    assert client().llen(held_key(queue, worker.hostname)) == 0
    assert admission.in_flight(queue) == 0


@pytest.mark.django_db
def test_a_dead_workers_held_batch_is_given_back_and_answered(lanes) -> None:
    version = make_version(max_batch_size=8, max_delay_ms=1000)
    queue = lane_queue()
    dead, alive, sweeper = lanes(queue), lanes(queue), lanes(queue)
    for worker in (dead, alive, sweeper):
        worker._beat()  # registered, alive
    client().delete(alive_key(dead.hostname))  # its heartbeat expired
    route = make_route(version_id=version.pk, queue=queue, max_delay_ms=1000)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(ask, route, 1)
        lost = _take(queue, dead)  # taken, then its worker died: no heartbeat, no answer
        second = pool.submit(ask, route, 2)
        kept = _take(queue, alive)  # the live worker's batch stays where it is
        assert sweeper.sweep() == 1
        assert client().llen(held_key(queue, dead.hostname)) == 0
        assert not client().sismember(lane.workers_key(), held_key(queue, dead.hostname))
        assert sweeper.sweep() == 0  # nothing twice
        assert client().lrange(held_key(queue, alive.hostname), 0, -1) == [kept]
        again = _take(queue, sweeper)
        assert again == lost  # the same message, redelivered
        sweeper.handle(queue, held_key(queue, sweeper.hostname), again)
        alive.handle(queue, held_key(queue, alive.hostname), kept)
        assert first.result(timeout=5)["output"] == {"y": 2}
        assert second.result(timeout=5)["output"] == {"y": 4}
    assert admission.in_flight(queue) == 0


def test_a_restarted_worker_takes_back_what_it_held_and_a_stopped_one_gives_it_back(
    lanes,
) -> None:
    queue = lane_queue()
    name = f"w{uuid.uuid4().hex[:8]}@test"
    before = lanes(queue, hostname=name)
    client().lpush(lane_key(queue), b'{"stale": 1}')
    _take(queue, before)
    before._beat()
    # Its next life (the same name, its heartbeat still fresh) takes the message back first.
    assert lanes(queue, hostname=name).sweep(include_own=True) == 1
    assert client().llen(lane_key(queue)) == 1
    # A stopping worker hands back what it still holds.
    held = _take(queue, before)
    before.stop(timeout=1)
    assert client().lrange(lane_key(queue), 0, -1) == [held]
    assert not client().exists(alive_key(name))
    assert not client().sismember(lane.workers_key(), held_key(queue, name))


def test_a_malformed_message_is_dropped_and_the_lane_goes_on(lanes, caplog) -> None:
    queue = lane_queue()
    worker = lanes(queue)
    client().lpush(lane_key(queue), b"not json")
    raw = _take(queue, worker)
    worker.handle(queue, held_key(queue, worker.hostname), raw)
    assert client().llen(held_key(queue, worker.hostname)) == 0
    assert "dropped a malformed message" in caplog.text


def test_in_eager_mode_batches_go_through_celery(eager) -> None:
    assert not lane.enabled()  # the worker's half runs inside apply_async


def test_the_setting_turns_the_lane_off(settings) -> None:
    assert lane.enabled()
    settings.INFERENCE_BATCH_LANE = False
    assert not lane.enabled()


@pytest.mark.django_db(transaction=True)
def test_a_lane_thread_outlives_a_batch_that_blew_up(monkeypatch, lanes, caplog) -> None:
    version = make_version(max_batch_size=8, max_delay_ms=1000)
    queue = lane_queue()
    worker = lanes(queue)
    real, calls = Lane.handle, []

    def flaky(self: Lane, *args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise ConnectionError("Redis went away under the batch")
        real(self, *args)

    monkeypatch.setattr(Lane, "handle", flaky)
    client().lpush(lane_key(queue), b"{}")  # the batch that blows up
    worker.start()
    reply = ask(make_route(version_id=version.pk, queue=queue, max_delay_ms=1000), 4)
    assert reply is not None and reply["output"] == {"y": 8}
    assert len(calls) == 2 and "a batch on" in caplog.text


def test_the_rest_of_a_partly_refused_batch_goes_onto_the_lane(monkeypatch, lanes, settings):
    def celery_publish(**kwargs: Any) -> None:
        raise AssertionError("published through Celery")

    monkeypatch.setattr(dispatch, "enqueue_batch", celery_publish)
    queue = lane_queue()
    worker = lanes(queue)
    settings.INFERENCE_QUEUE_BOUNDS = {queue: 2}
    deadline = time.time() + 10
    admission.admit_many(queue, {"someone-else": deadline})  # one slot of two is taken
    batch = [
        dispatch.Pending(rid, {"x": n}, deadline, waiter=inbox.expect(rid))
        for n, rid in enumerate([uuid.uuid4().hex, uuid.uuid4().hex])
    ]
    try:
        assert dispatch.collector(make_route(version_id=1, queue=queue))._send(batch)
        assert batch[0].error is None
        assert isinstance(batch[1].error, admission.QueueFull)
        message = json.loads(_take(queue, worker))
        assert [rid for rid, _, _ in message["items"]] == [batch[0].request_id]
    finally:
        admission.release_many(queue, ["someone-else", batch[0].request_id])
        for pending in batch:
            inbox.forget(pending.request_id)
