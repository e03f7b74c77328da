"""The Celery broker transport keeps one Redis client per channel (plumbing/redis_wire.py)."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from django.conf import settings
from kombu import Connection, Consumer, Exchange, Producer, Queue

from plumbing.logcontext import log_stream_var
from plumbing.redis_wire import Channel, Transport, redis_wire


@pytest.fixture
def connection():
    if not settings.REDIS_URL:
        pytest.skip("a Redis broker (PostgreSQL + Redis pass)")
    options = {"global_keyprefix": f"{settings.REDIS_KEY_PREFIX}:broker-test:"}
    with Connection(settings.REDIS_URL, transport=Transport, transport_options=options) as conn:
        yield conn


def test_celery_uses_it_for_a_redis_broker():
    from config.celery import app

    if not settings.REDIS_URL:
        assert app.conf.broker_url.startswith("memory://")
        return
    assert app.conf.broker_transport == "plumbing.redis_wire:Transport"
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, Channel)


def test_publishes_and_acks_reuse_one_client_and_still_deliver(connection):
    channel = connection.default_channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
    given = object()
    with channel.conn_or_acquire(given) as passed:
        assert passed is given
    queue = Queue(f"broker-test-{uuid.uuid4().hex}", Exchange(""), routing_key="")
    queue = queue(channel)
    queue.declare()
    try:
        received = []
        producer = Producer(channel)
        for n in range(3):
            producer.publish({"n": n}, routing_key=queue.name, declare=[], serializer="json")
        with Consumer(
            channel, [queue], callbacks=[lambda body, msg: (received.append(body), msg.ack())]
        ):
            for _ in range(3):
                connection.drain_events(timeout=5)
        assert received == [{"n": 0}, {"n": 1}, {"n": 2}]
    finally:
        queue.delete()


def test_a_new_pool_gets_a_new_client(connection):
    channel = connection.default_channel
    with channel.conn_or_acquire() as before:
        pass
    channel._pool = None  # what kombu does when it drops its pools after a connection error
    with channel.conn_or_acquire() as after:
        assert after is not before and after.connection_pool is channel.pool


def test_wake_loop_makes_the_event_loop_readable_from_another_thread(connection):
    import select
    import threading

    from kombu.asynchronous import Hub

    hub = Hub()
    try:
        transport = connection.transport
        transport.register_with_event_loop(connection.connection, hub)
        read = transport._wake[0]
        assert select.select([read], [], [], 0)[0] == []  # nothing pending
        threading.Thread(target=transport.wake_loop).start()
        assert select.select([read], [], [], 2)[0] == [read]  # woken from another thread
        transport._drain_wake(read)
        assert select.select([read], [], [], 0)[0] == []  # drained
        transport.register_with_event_loop(connection.connection, hub)  # a reconnect
        assert transport._wake[0] == read  # the same pipe: nothing a late writer could hit
    finally:
        hub.close()


def _pushed(client, key: str) -> dict:
    raw = client.rpop(key)
    assert raw is not None, f"nothing on {key}"
    return json.loads(raw)


def test_redis_wire_is_what_apply_async_pushes():
    """The direct push (plumbing.redis_wire.redis_wire) and Celery's own publish put the same
    message on the same list, but for the per-message delivery tag and expiry instant."""
    from config.celery import app
    from inference.tasks import inference_stream
    from inference.transport.redis_client import client

    queue = f"wire-test-{uuid.uuid4().hex[:8]}"
    args = (7, "text", [{"prompt": "hi"}], "inf-abc", 1.5e9, queue)
    options = {"task_id": "tid-1", "queue": queue, "expires": 30.0, "argsrepr": "(summary)"}
    wire = redis_wire(inference_stream, args, **options)
    if not settings.REDIS_URL:
        assert wire is None  # the embedded memory broker: Celery publishes
        return
    assert wire is not None
    redis = client()
    token = log_stream_var.set("log-req-1")  # a request whose log lines stream (X-Log-Stream)
    try:
        key, payload = redis_wire(inference_stream, args, **options) or ("", "")
        inference_stream.apply_async(args=args, kwargsrepr="{}", declare=[], **options)
    finally:
        log_stream_var.reset(token)
    published = _pushed(redis, key)  # the same list: Celery's publish landed where we push
    redis.lpush(key, payload)
    ours = _pushed(redis, key)
    assert ours["headers"]["sluice_log_stream"] == "log-req-1"
    for message in (published, ours):
        message["properties"].pop("delivery_tag")
        message["headers"].pop("expires")
    assert ours == published
    assert json.loads(base64.b64decode(ours["body"]))[0] == json.loads(json.dumps(args))
    with app.connection_for_write() as conn:  # and a consumer reads it as a task message
        redis.lpush(key, payload)
        got = []
        consumer = Consumer(
            conn.default_channel,
            [Queue(queue, Exchange(""), routing_key=queue)],
            callbacks=[lambda body, msg: (got.append((msg.headers["task"], body[0])), msg.ack())],
            accept=["json"],
        )
        with consumer:
            conn.drain_events(timeout=5)
        assert got == [("inference_stream", list(json.loads(json.dumps(args))))]


def test_redis_wire_steps_aside_where_only_celery_may_publish(settings):
    from celery import signals

    from inference.tasks import inference_stream

    args = (7, "text", [], "inf-abc", 1.5e9, "cpu")
    options = {"task_id": "t", "queue": "cpu", "expires": 30.0, "argsrepr": "x"}
    if settings.REDIS_URL:
        assert redis_wire(inference_stream, args, **options) is not None

    def receiver(**kwargs):  # a monitoring hook wants to see every publish done
        pass

    signals.after_task_publish.connect(receiver)
    try:
        assert redis_wire(inference_stream, args, **options) is None
    finally:
        signals.after_task_publish.disconnect(receiver)
    settings.REDIS_URL = "redis://elsewhere:6379/0"  # the broker is not the app's Redis
    assert redis_wire(inference_stream, args, **options) is None
