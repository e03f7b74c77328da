"""Batching before the queue (web side) and one answer message per batch (worker side)."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.conf import settings

from inference.tasks import inference_predict_batch
from inference.tests.conftest import ask, make_route, make_version
from inference.tests.fakes import Doubler
from inference.transport import admission, dispatch
from inference.transport.redis_client import client
from inference.transport.replies import Signal, Waiter, batch_reply_publish, inbox


class FakeWorker:
    """Stands in for ``enqueue_batch``: records each message and answers it (``x`` doubled)
    after ``delay`` seconds, through the real reply channel, unless told to stay silent."""

    def __init__(self, delay: float = 0.05, silent: bool = False) -> None:
        self.delay = delay
        self.silent = silent
        self.messages: list[list[tuple[str, dict[str, Any], float]]] = []
        self.lock = threading.Lock()

    def __call__(self, *, queue: str, items: list[Any], reply_to: str, batch_id: str, **kw):
        with self.lock:
            self.messages.append(list(items))
        if self.silent:
            return

        def answer() -> None:
            replies = {
                rid: {"ok": True, "output": {"y": p["x"] * 2}, "batch_size": len(items)}
                for rid, p, _ in items
            }
            batch_reply_publish(
                reply_to, batch_id, replies, queue=queue, release=[rid for rid, _, _ in items]
            )

        threading.Timer(self.delay, answer).start()


def _fake_send(monkeypatch, fake) -> None:
    """``fake`` stands in for the broker: every batch goes through ``enqueue_batch`` (the
    direct push with the queue slots is off)."""
    monkeypatch.setattr(dispatch, "batch_wire", lambda *args: None)
    monkeypatch.setattr(dispatch, "enqueue_batch", fake)


def _reply(waiter: Waiter, timeout: float) -> dict[str, Any] | None:
    """What the reader delivered to ``waiter`` within ``timeout`` (a request thread of the
    worker-side tests, which have no collector)."""
    waiter.event.wait(timeout)
    return waiter.reply


def test_it_sends_concurrent_requests_for_one_version_as_few_messages(monkeypatch) -> None:
    worker = FakeWorker()
    _fake_send(monkeypatch, worker)
    route = make_route(max_batch_size=8)
    barrier = threading.Barrier(24)

    def one(x: int) -> dict[str, Any] | None:
        barrier.wait()
        return ask(route, x)

    with ThreadPoolExecutor(max_workers=24) as pool:
        replies = list(pool.map(one, range(24)))
    assert [r["output"]["y"] for r in replies] == [2 * x for x in range(24)]  # each its own
    sent = [rid for message in worker.messages for rid, _, _ in message]
    assert len(sent) == len(set(sent)) == 24  # every request went exactly once
    assert all(len(m) <= 8 for m in worker.messages)
    assert len(worker.messages) < 24 / 2  # merged: far fewer messages than requests
    assert admission.in_flight(route.queue) == 0  # the worker's answer freed the slots


def test_it_sends_a_lone_request_at_once(monkeypatch) -> None:
    _fake_send(monkeypatch, FakeWorker(delay=0))
    route = make_route(max_batch_size=32, max_delay_ms=2000)
    started = time.monotonic()
    assert ask(route, 3) == {"ok": True, "output": {"y": 6}, "batch_size": 1}
    assert time.monotonic() - started < 1  # no batch window while nothing else is in flight


def test_it_sends_one_message_per_request_when_batching_is_off(monkeypatch) -> None:
    worker = FakeWorker(delay=0.02)
    _fake_send(monkeypatch, worker)
    route = make_route(max_batch_size=1)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda x: ask(route, x), range(8)))
    assert [len(m) for m in worker.messages] == [1] * 8


def test_it_honours_each_requests_own_deadline_in_a_batch(monkeypatch) -> None:
    worker = FakeWorker(delay=0.6)  # answers after the short deadline only
    _fake_send(monkeypatch, worker)
    route = make_route(max_batch_size=2, max_delay_ms=500)
    # Keep a batch in flight, so the next two wait for each other and travel together.
    first = threading.Thread(target=ask, args=(route, 0))
    first.start()
    time.sleep(0.05)
    results: dict[str, Any] = {}

    def short() -> None:
        started = time.monotonic()
        results["short"] = ask(route, 1, timeout=0.3)
        results["short_took"] = time.monotonic() - started

    def long() -> None:
        results["long"] = ask(route, 2, timeout=5)

    threads = [threading.Thread(target=short), threading.Thread(target=long)]
    for t in threads:
        t.start()
    for t in [first, *threads]:
        t.join(10)
    assert results["short"] is None and results["short_took"] < 0.6  # 504 at its own deadline
    assert results["long"]["output"] == {"y": 4}
    assert [len(m) for m in worker.messages] == [1, 2]
    deadlines = sorted(d for _, _, d in worker.messages[1])
    assert deadlines[1] - deadlines[0] > 4  # each item carries its own deadline
    time.sleep(0.7)
    assert admission.in_flight(route.queue) == 0


def test_it_does_not_send_a_request_whose_deadline_passed_while_it_waited(monkeypatch) -> None:
    worker = FakeWorker(silent=True)
    _fake_send(monkeypatch, worker)
    collector = dispatch.collector(make_route())
    late = dispatch.Pending("late", {"x": 1}, time.time() - 0.01)
    collector.submit(late)  # the first request leads at once: its batch is decided
    assert late.error is None and worker.messages == []
    assert late.wait(0.05) is None  # no answer will come: its thread answers 504


def test_it_refuses_past_the_queue_bound_at_once(monkeypatch, settings) -> None:
    worker = FakeWorker(silent=True)
    _fake_send(monkeypatch, worker)
    settings.INFERENCE_QUEUE_BOUND = 2
    route = make_route(max_batch_size=5, max_delay_ms=300)
    collector = dispatch.collector(route)
    # One batch in flight holds the collector open, so five requests meet in the next one.
    collector._in_flight = 1
    pendings = [
        dispatch.Pending(f"r{n}-{uuid.uuid4().hex}", {"x": n}, time.time() + 5) for n in range(5)
    ]

    def submit_and_wait(pending: dispatch.Pending) -> None:
        collector.submit(pending)
        with contextlib.suppress(admission.QueueFull):  # the refusal, also as it waits
            pending.wait(1.0)  # the silent worker never answers the admitted ones

    with ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(submit_and_wait, pendings))
    refused = [p for p in pendings if p.error is not None]
    assert len(refused) == 3
    assert all(isinstance(p.error, admission.QueueFull) for p in refused)
    assert [len(m) for m in worker.messages] == [2]
    assert admission.in_flight(route.queue) == 2
    admission.release_many(route.queue, [rid for rid, _, _ in worker.messages[0]])


def test_it_answers_every_refused_request_when_the_broker_is_down(monkeypatch) -> None:
    from kombu.exceptions import OperationalError

    def down(**kwargs: Any) -> None:
        raise OperationalError("Connection refused")

    _fake_send(monkeypatch, down)
    route = make_route()
    with pytest.raises(OperationalError):
        ask(route, 1)
    assert admission.in_flight(route.queue) == 0
    assert dispatch.collector(route)._in_flight == 0


@pytest.mark.django_db
def test_the_worker_answers_a_batch_with_one_message_and_frees_its_slots() -> None:
    version = make_version(max_batch_size=8, max_delay_ms=1000)
    queue = f"q{uuid.uuid4().hex[:10]}"
    deadline = time.time() + 10
    items = [[uuid.uuid4().hex, {"x": n}, deadline] for n in range(5)]
    items.append([uuid.uuid4().hex, {"x": 99}, time.time() - 1])  # expired: dropped, not run
    admission.admit_many(queue, {rid: d for rid, _, d in items})
    waiters = {rid: inbox.expect(rid) for rid, _, _ in items}
    answered = threading.Event()
    batch_id = uuid.uuid4().hex
    inbox.expect_batch(batch_id, answered.set, deadline)
    started = time.monotonic()
    inference_predict_batch(version.pk, queue, items, inbox.address(), batch_id)
    assert answered.wait(5)
    assert time.monotonic() - started < 0.9  # a collected batch runs at once, no batch window
    assert Doubler.batches == [[0, 1, 2, 3, 4]]  # one run of the model
    for rid, payload, _ in items[:5]:
        reply = _reply(waiters[rid], 2)
        assert reply is not None and reply["output"] == {"y": payload["x"] * 2}
        assert reply["batch_size"] == 5
    assert _reply(waiters[items[5][0]], 0.05) is None
    assert admission.in_flight(queue) == 0


@pytest.mark.django_db
def test_the_worker_answers_every_item_when_the_engine_is_missing() -> None:
    version = make_version(options={"handler": "sluice_missing_pkg.Handler"})
    rid, batch_id = uuid.uuid4().hex, uuid.uuid4().hex
    waiter = inbox.expect(rid)
    inference_predict_batch(
        version.pk, "cpu", [[rid, {"x": 1}, time.time() + 10]], inbox.address(), batch_id
    )
    reply = _reply(waiter, 5)
    assert reply is not None and reply["status"] == 503
    assert "sluice_missing_pkg is not installed" in reply["error"]


@pytest.mark.django_db
def test_on_redis_a_batch_is_queued_with_its_slots_in_one_round_trip(monkeypatch, settings) -> None:
    """Without the batch lane, the Celery task's message goes in the round trip that takes
    the queue slots (no Celery publish), and a worker runs it as it would any task message.
    (With the lane: inference/tests/test_lane.py.)"""
    if not settings.REDIS_URL:
        pytest.skip("the direct push needs the Redis broker (PostgreSQL + Redis pass)")
    settings.INFERENCE_BATCH_LANE = False

    def celery_publish(**kwargs):
        raise AssertionError("published through Celery")

    monkeypatch.setattr(dispatch, "enqueue_batch", celery_publish)
    version = make_version(max_batch_size=8, max_delay_ms=1000)
    route = make_route(version_id=version.pk)
    trips = []
    real_admit = admission.admit_many
    monkeypatch.setattr(
        admission,
        "admit_many",
        lambda *a, **kw: trips.append(kw.get("send")) or real_admit(*a, **kw),
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        asked = pool.submit(ask, route, 21)
        prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]
        popped = client().brpop([f"{prefix}{route.queue}"], timeout=5)
        assert popped is not None
        message = json.loads(popped[1])
        assert message["headers"]["task"] == "inference_predict_batch"
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        inference_predict_batch(*args, **kwargs)  # the worker's half, in this thread (the db)
        reply = asked.result(timeout=5)
        assert reply is not None and reply["output"] == {"y": 42} and reply["batch_size"] == 1
    assert len(trips) == 1 and trips[0] is not None  # slots and message: one step
    assert admission.in_flight(route.queue) == 0


def test_a_signal_behaves_as_an_event_set_once() -> None:
    signal = Signal()
    assert not signal.is_set() and signal.wait(0.01) is False and signal.wait(-1) is False
    woken = []
    threads = [threading.Thread(target=lambda: woken.append(signal.wait(5))) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    signal.set()
    signal.set()  # a second set is harmless
    for thread in threads:
        thread.join(5)
    assert woken == [True, True, True]  # every waiter, as with threading.Event
    assert signal.is_set() and signal.wait(0) and signal.wait()  # and it stays set


def test_a_request_handed_the_turn_leads_before_it_gives_up(monkeypatch) -> None:
    worker = FakeWorker(silent=True)
    _fake_send(monkeypatch, worker)
    route = make_route(max_batch_size=1)
    collector = dispatch.collector(route)
    first, behind, late = (
        dispatch.Pending(f"{name}-{uuid.uuid4().hex}", {"x": 1}, time.time() + 5)
        for name in ("first", "behind", "late")
    )
    for pending in (first, behind, late):
        pending.collector = collector
    collector._leading, collector._open = True, [first, behind, late]
    first.turn = True  # handed to it, its wake-up not seen yet
    assert first.wait(0.05) is None  # it leads its batch, then gives up waiting for an answer
    assert [[rid for rid, _, _ in m] for m in worker.messages] == [[first.request_id]]
    assert behind.turn and behind.waiter.event.is_set()  # the turn went on
    assert collector.withdraw(behind) is True  # giving up now, it would have to lead first
    assert collector.withdraw(late) is False and collector._open == [behind]  # just leaves
    admission.release_many(route.queue, [first.request_id])


def test_admission_reloads_its_script_when_redis_lost_it(monkeypatch) -> None:
    if not settings.REDIS_URL:
        pytest.skip("the admission script is the Redis configuration's")
    real = admission._admit_sha

    class Lost:  # the sha of a script Redis no longer has (a restart, a SCRIPT FLUSH)
        cleared = False

        def __call__(self) -> str:
            return real() if self.cleared else "0" * 40

        def cache_clear(self) -> None:
            self.cleared = True

    lost = Lost()
    monkeypatch.setattr(admission, "_admit_sha", lost)
    queue = f"q{uuid.uuid4().hex[:10]}"
    assert admission.admit_many(queue, {"a": time.time() + 5}) == []
    assert lost.cleared and admission.in_flight(queue) == 1
    admission.release(queue, "a")
