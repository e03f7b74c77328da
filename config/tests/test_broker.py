"""The Celery broker transport keeps one Redis client per channel (config/broker.py)."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings
from kombu import Connection, Consumer, Exchange, Producer, Queue

from config.broker import Channel, Transport


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
    assert app.conf.broker_transport == "config.broker:Transport"
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
