"""The embedded all-in-one process: daphne serving HTTP and WebSocket, plus a Celery worker on
a thread of the same process (memory transport when no broker is configured)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import current_app as app
from django.conf import settings

log = logging.getLogger(__name__)


def start_worker(*, queues: list[str] | None = None, concurrency: int = 4) -> Any:
    """Start a worker on a daemon thread and return once it consumes.

    By default it consumes the default queue and every inference queue (``INFERENCE_QUEUES``),
    so a model version on any queue is served by the one embedded process.

    ``WorkController`` (not ``celery worker``'s ``Worker``) installs no signal handlers, so it
    runs off the main thread; daphne keeps the main thread and its signals.
    """
    # celery-types declares WorkController without its signature.
    if queues is None:
        queues = list(dict.fromkeys(["celery", *settings.INFERENCE_QUEUES, settings.JOBS_QUEUE]))
    controller: Any = app.WorkController
    worker = controller(
        pool_cls="threads",
        concurrency=concurrency,
        queues=queues,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    threading.Thread(target=worker.start, name="celery-worker", daemon=True).start()
    log.info("in-process Celery worker started (%s)", app.conf.broker_url.split("@")[-1])
    start_beat()
    return worker


def start_beat() -> Any:
    """CELERY_BEAT_SCHEDULE (the jobs reconciler) on a thread of this process, with the
    in-memory scheduler: the embedded server needs no separate ``celery beat``."""
    from celery.beat import EmbeddedService  # type: ignore[attr-defined]

    service: Any = EmbeddedService(app, thread=True, scheduler_cls="celery.beat:Scheduler")
    service.start()
    return service
