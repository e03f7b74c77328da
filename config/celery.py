"""The Celery app. Settings come from Django's (CELERY_* names)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_init, worker_ready
from prometheus_client import start_http_server

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("sluice")
# The default app of every thread, so library code reaches it as ``celery.current_app``
# without importing this module (apps never import config).
app.set_default()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class WakeLoop(bootsteps.StartStopStep):
    """Work a pool thread hands to the worker's event loop wakes the loop at once.

    A task that finishes in a *thread* pool acknowledges its message through
    ``Consumer.call_soon``: the ack waits in the loop's ready list until the loop next wakes.
    With ``task_acks_late`` and a full prefetch window nothing else wakes it (kombu's Redis
    transport issues no ``BRPOP`` while the window is full), so the loop slept until its next
    timer — kombu's 10 s ``maybe_restore_messages`` — with messages waiting. Measured: 16
    concurrent unbatched requests stalled a 16-thread worker 10 s at a time. Here ``call_soon``
    from any other thread also writes a byte to a pipe the loop watches
    (``plumbing.redis_wire.Transport.wake_loop``).
    """

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, parent: Any) -> None:
        if parent.hub is None:  # no event loop (the solo pool)
            return
        schedule = parent.call_soon
        loop_thread = threading.get_ident()

        def call_soon(callback: Any, *args: Any, **kwargs: Any) -> Any:
            scheduled = schedule(callback, *args, **kwargs)
            if threading.get_ident() != loop_thread:
                transport = getattr(parent.connection, "transport", None)
                wake = getattr(transport, "wake_loop", None)  # our Redis transport only
                if wake is not None:
                    wake()
            return scheduled

        parent.call_soon = call_soon


app.steps["consumer"].add(WakeLoop)


# The batch lane's threads (inference.transport.lane), by name: config imports no app module
# before Django is set up.
app.steps["worker"].add("inference.transport.lane:BatchLane")


class Presence(bootsteps.StartStopStep):
    """The worker announces the queues it consumes while it consumes them
    (``plumbing.presence``): web processes refuse a request whose queue nobody serves with a
    503 at once instead of letting it wait out its deadline. Started once the consumer takes
    messages from its queues; stopped (the claims removed) when it stops, on shutdown and
    on a lost broker connection alike."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.announcer: Any = None

    def start(self, parent: Any) -> None:
        from plumbing.presence import Announcer, consumed_queues

        # Unique per consumer: two in-process workers (embedded) may share a hostname.
        name = f"{parent.hostname}/{os.getpid()}/{id(self):x}"
        self.announcer = Announcer(name, consumed_queues(parent))
        self.announcer.start()

    def stop(self, parent: Any) -> None:
        if self.announcer is not None:
            self.announcer.stop()
            self.announcer = None

    shutdown = stop


app.steps["consumer"].add(Presence)


@worker_init.connect
def _serve_worker_metrics(**kwargs: Any) -> None:
    """A separate worker process serves its Prometheus metrics on WORKER_METRICS_PORT (the
    embedded in-process worker shares the web process's /metrics instead)."""
    from django.conf import settings

    port = settings.WORKER_METRICS_PORT
    if settings.EMBEDDED or not port:
        return
    try:
        start_http_server(port)
    except OSError:
        logging.getLogger(__name__).exception("worker metrics: port %s unavailable", port)


@worker_ready.connect
def _freeze_startup_objects(**kwargs: Any) -> None:
    """A worker's start-up objects stay out of the garbage collector's scans (see
    config.startup)."""
    from config.startup import freeze_startup_objects

    freeze_startup_objects()
