"""The embedded all-in-one process: daphne serving HTTP and WebSocket, plus a Celery worker on
a thread of the same process (memory transport when no broker is configured, fed by the
shared spool of plumbing/spool.py)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import current_app as app
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

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
    bridge = _keep_own_work_in_process(queues)
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
    if bridge is not None:
        bridge.start()
    log.info("in-process Celery worker started (%s)", app.conf.broker_url.split("@")[-1])
    start_beat()
    return worker


def _keep_own_work_in_process(queues: list[str]) -> Any:
    """On the embedded default's shared spool (plumbing/spool.py): this process's own messages
    go to the in-process memory transport instead (no file, no polling on the unary path), and
    a bridge moves onto it what other processes (manage.py commands) spool for ``queues``.
    Returns the bridge, not started; None on any other broker.

    Runs before this process publishes anything: Celery connects on first use."""
    if not app.conf.broker_url.startswith("filesystem://"):
        return None
    from plumbing.spool import Bridge

    spooled = dict(app.conf.broker_transport_options or {})
    # The names the app reads its settings under (namespace CELERY): plain ``broker_url``
    # would be shadowed by them.
    app.conf.update(
        CELERY_BROKER_URL="memory://localhost/",
        CELERY_BROKER_TRANSPORT=None,
        # As for a memory broker in settings: its 1 s default would delay every request.
        CELERY_BROKER_TRANSPORT_OPTIONS={**spooled, "polling_interval": 0.01},
    )
    if not app.conf.broker_url.startswith("memory://"):  # CELERY_BROKER_URL in os.environ
        raise ImproperlyConfigured(
            "manage.py serve keeps its own work in process: leave CELERY_BROKER_URL unset on "
            "the embedded default (EMBEDDED_BROKER_DIR picks the spool)."
        )
    return Bridge(app, spooled, queues)


def start_beat() -> Any:
    """CELERY_BEAT_SCHEDULE (the jobs reconciler) on a thread of this process, with the
    in-memory scheduler: the embedded server needs no separate ``celery beat``."""
    from celery.beat import EmbeddedService  # type: ignore[attr-defined]

    service: Any = EmbeddedService(app, thread=True, scheduler_cls="celery.beat:Scheduler")
    service.start()
    return service
