"""Kombu's Redis transport with two fixes for the workers and web processes of Sluice.

1. **One Redis client per channel.** kombu builds a new ``redis.Redis`` for every publish and
   every acknowledgement (``Channel.conn_or_acquire``); a client over the channel's
   connection pool is thread-safe, so one per pool is enough (docs/performance-history.md).
2. **A way to wake the worker's event loop from another thread** (:meth:`Transport.wake_loop`:
   a byte on a pipe the loop watches), used by ``config.celery.WakeLoop``: see there why.

Selected for ``redis://`` and ``rediss://`` brokers by ``CELERY_BROKER_TRANSPORT``.

And :func:`redis_wire`: the exact bytes ``apply_async`` would ``LPUSH`` for a task, built
without Celery's producer machinery, so a hot path can push them in a round trip it makes
anyway (docs/performance-history.md has the cost of each).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from celery import current_app as app
from celery import signals
from django.conf import settings
from kombu.serialization import dumps as serialize
from kombu.transport import redis as kombu_redis  # type: ignore[attr-defined]  # no stubs


class Channel(kombu_redis.Channel):
    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # a new pool after a reconnect gets a new client
        shared = self.__dict__.get("_sluice_client")
        if shared is None or shared.connection_pool is not pool:
            shared = self.__dict__["_sluice_client"] = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
    _wake: tuple[int, int] | None = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        # One pipe for the transport's life, also across re-registrations: closing it while a
        # pool thread may still write to its number would risk a write to a reused descriptor.
        if self._wake is None:
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._wake = (read, write)
        loop.add_reader(self._wake[0], self._drain_wake, self._wake[0])

    @staticmethod
    def _drain_wake(fd: int) -> None:
        """Being woken is the point: the loop's on-tick callbacks run next."""
        with suppress(BlockingIOError):
            while os.read(fd, 4096):
                pass

    def wake_loop(self) -> None:
        """Thread-safe: make the event loop (if any) run its next iteration now."""
        wake = self._wake
        if wake is not None:
            # Full: a wake-up is pending anyway. Closed: the loop is gone.
            with suppress(OSError):
                os.write(wake[1], b"\0")


def redis_wire(
    task: Any,
    args: tuple[Any, ...],
    *,
    task_id: str,
    queue: str,
    expires: float,
    argsrepr: str,
    kwargsrepr: str = "{}",
) -> tuple[str, str] | None:
    """What ``task.apply_async(args=args, task_id=…, queue=queue, expires=expires,
    argsrepr=…, kwargsrepr=…, declare=[])`` would push on the broker: ``(list key, message)``.

    None where only Celery's own publish is right: a broker other than ``REDIS_URL``'s Redis
    through this module's transport, receivers of ``after_task_publish`` (the message is not
    pushed yet), task-sent events, another serializer or compression, eager mode, or a
    priority. ``before_task_publish`` is sent as Celery sends it, so its receivers (the
    log-stream header of ``streaming.loglines``) still shape the message. The message is built by
    Celery's ``create_task_message`` (headers, body) and laid out as kombu's virtual channel
    and Redis transport lay it out (properties, base64 body, the queue's list key); the
    worker cannot tell the difference (``plumbing/tests/test_redis_wire.py`` compares the two).
    """
    app = task._get_app()
    if (
        app.conf.task_always_eager  # the one setting tests flip at run time
        or _listened(signals.after_task_publish)
        or _listened(signals.task_sent)
    ):
        return None
    found = _wire_task(task.name, settings.REDIS_URL)
    if found is None:
        return None
    name, time_limit, soft_time_limit, ignore_result, prefix = found
    headers, properties, body, _ = app.amqp.create_task_message(
        task_id,
        name,
        args,
        {},
        expires=expires,
        reply_to=app.thread_oid,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        ignore_result=ignore_result,
        argsrepr=argsrepr,
        kwargsrepr=kwargsrepr,
    )
    if _listened(signals.before_task_publish):  # as Celery sends it (the log-stream header)
        signals.before_task_publish.send(
            sender=name,
            body=body,
            exchange="",
            routing_key=queue,
            declare=[],
            headers=headers,
            properties=properties,
            retry_policy=None,
        )
    content_type, encoding, data = serialize(body, serializer="json")
    properties.update(
        # Celery's send_task hands these options on as message properties.
        argsrepr=argsrepr,
        kwargsrepr=kwargsrepr,
        delivery_mode=2,  # persistent, the default exchange's
        expiration=str(int(expires * 1000)),
        delivery_info={"exchange": "", "routing_key": queue},
        priority=0,
        body_encoding="base64",
        delivery_tag=str(uuid.uuid4()),
    )
    message = {
        "body": base64.b64encode(data.encode() if isinstance(data, str) else data).decode(),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": properties,
    }
    return f"{prefix}{queue}", json.dumps(message)


@functools.lru_cache(maxsize=64)
def _wire_task(name: str, redis_url: str) -> tuple[str, Any, Any, bool, str] | None:
    """The settings :func:`redis_wire` needs that are fixed once Celery is configured, read
    once per task (each Celery setting read costs ~10 µs): None where the broker or the task
    rules the direct push out; else the task's name, time limits, ``ignore_result`` and the
    broker's key prefix."""
    task = app.tasks[name]
    conf = app.conf
    if (
        conf.broker_url != redis_url
        or conf.broker_transport != getattr(settings, "CELERY_BROKER_TRANSPORT", None)
        or conf.task_send_sent_event
        or conf.task_protocol != 2
        or conf.task_compression
        or conf.task_serializer != "json"
        or task.priority
    ):
        return None
    prefix = str((conf.broker_transport_options or {}).get("global_keyprefix", ""))
    return task.name, task.time_limit, task.soft_time_limit, bool(task.ignore_result), prefix


def _listened(signal: Any) -> bool:
    """Whether a Celery signal has receivers (what Celery itself checks before sending)."""
    return bool(signal.receivers)
