"""Kombu's Redis transport with two fixes for the workers and web processes of Sluice.

1. **One Redis client per channel.** kombu builds a new ``redis.Redis`` (with its ~170
   response callbacks) for every publish and every acknowledgement
   (``Channel.conn_or_acquire``). A client over the channel's connection pool is thread-safe,
   so one per pool is enough: on the unary inference path that was a visible share of the web
   process's Celery publish and of the worker's ack (docs/performance.md).
2. **A way to wake the worker's event loop from another thread** (:meth:`Transport.wake_loop`:
   a byte on a pipe the loop watches), used by ``config.celery.WakeLoop``: see there why.

Selected for ``redis://`` and ``rediss://`` brokers by ``CELERY_BROKER_TRANSPORT``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
