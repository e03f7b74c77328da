"""The embedded default's shared broker: a spool of message files under ``var/`` that every
process of one checkout sees, so a job queued by a ``manage.py`` command in another shell
reaches the running ``manage.py serve`` at once (not when the reconciler resends it).

Kombu's ``filesystem://`` transport with three changes:

1. **Atomic writes.** Kombu creates the message file, then writes it: a consumer that lists
   the folder in between takes an empty file and loses the message. Here the file is written
   under a name no consumer matches, then renamed into place.
2. **Atomic claims in the folder itself.** Kombu moves a taken file to the temporary folder,
   which is a copy (not a rename) when that is another file system, so two consumers could
   both take it. Here it is renamed within the spool (one rename wins), read, then deleted.
3. **Routing by queue name.** Every Sluice queue is bound by its own name (Celery's automatic
   queues), so a message goes to the queue its routing key names: no exchange tables need to
   be shared between processes.

``manage.py serve`` keeps its own work on the in-process memory transport (no polling on the
unary path) and runs a :class:`Bridge` that moves what other processes spool onto it
(``plumbing.embedded.start_worker``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic_ns
from typing import Any

from kombu import Connection, Consumer, Queue
from kombu.transport import filesystem  # type: ignore[attr-defined]  # no stubs

log = logging.getLogger(__name__)

URL = "filesystem://"
# What a message's bytes are kept under while being written (no consumer matches it).
_WRITING = ".writing"


class Channel(filesystem.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Path(self.data_folder_in).mkdir(parents=True, exist_ok=True)
        Path(self.data_folder_out).mkdir(parents=True, exist_ok=True)

    def _lookup(self, exchange: str, routing_key: str, default: Any = None) -> list[str]:
        if routing_key:
            return [routing_key]
        return list(super()._lookup(exchange, routing_key, default))

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        # Names sort in the order they were written (kombu's millisecond names tie within one).
        name = f"{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + _WRITING
        with open(partial, "wb") as fh:
            fh.write(json.dumps(payload).encode())
        os.replace(partial, final)

    def _get(self, queue: str) -> Any:
        suffix = f".{queue}.msg"
        folder = self.data_folder_in
        for name in sorted(os.listdir(folder)):
            if not name.endswith(suffix):
                continue
            claimed = os.path.join(folder, f"{name}.{os.getpid()}.claimed")
            try:
                os.rename(os.path.join(folder, name), claimed)
            except FileNotFoundError:
                continue  # another consumer took it first
            try:
                with open(claimed, "rb") as fh:
                    payload = fh.read()
            finally:
                os.remove(claimed)
            return json.loads(payload)
        raise Empty()

    def _size(self, queue: str) -> int:
        suffix = f".{queue}.msg"
        return sum(1 for name in os.listdir(self.data_folder_in) if name.endswith(suffix))

    def _purge(self, queue: str) -> int:
        count = 0
        while True:
            try:
                self._get(queue)
            except Empty:
                return count
            count += 1


class Transport(filesystem.Transport):
    Channel = Channel


class Bridge:
    """Moves the messages other processes spool for ``queues`` onto ``app``'s own broker (the
    in-process memory transport of ``manage.py serve``), each acknowledged once published.

    A message is the same bytes and headers on both transports (both are kombu virtual
    transports), so the worker cannot tell where it came from.
    """

    def __init__(self, app: Any, options: dict[str, Any], queues: list[str]) -> None:
        self.app = app
        self.options = options  # the spool's transport options (data folders, polling)
        self.queues = queues
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-bridge", daemon=True)

    def start(self) -> Bridge:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except Exception:
                # Kept running: a spool the bridge cannot read must not end the server.
                log.exception("spool bridge failed; retrying in 1 s")
                self._stop.wait(1)

    def _serve(self) -> None:
        # kombu's stubs lack most of Connection and Consumer.
        transport: Any = Transport
        spool: Any = Connection(URL, transport=transport, transport_options=self.options)
        with spool:
            queues = [Queue(name, routing_key=name) for name in self.queues]
            consumer: Any = Consumer(
                spool.default_channel, queues, on_message=self._forward, accept=["json"]
            )
            with consumer:
                while not self._stop.is_set():
                    with contextlib.suppress(socket.timeout):
                        spool.drain_events(timeout=1)

    def _forward(self, message: Any) -> None:
        queue = message.delivery_info.get("routing_key")
        properties = message.properties
        with self.app.producer_or_acquire() as producer:
            producer.publish(
                message.body,
                exchange="",
                routing_key=queue,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                headers=message.headers,
                correlation_id=properties.get("correlation_id"),
                reply_to=properties.get("reply_to"),
                priority=properties.get("priority"),
                declare=[],
                retry=True,
            )
        message.ack()
