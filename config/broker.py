"""Kombu's Redis transport, keeping one Redis client per channel.

kombu builds a new ``redis.Redis`` (with its ~170 response callbacks) for every publish and
every acknowledgement (``Channel.conn_or_acquire``). A client over the channel's connection
pool is thread-safe, so one per pool is enough: on the unary inference path that was a visible
share of the web process's Celery publish and of the worker's ack (docs/performance.md).
Selected for ``redis://`` and ``rediss://`` brokers by ``CELERY_BROKER_TRANSPORT``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
