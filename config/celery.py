"""The Celery app. Settings come from Django's (CELERY_* names)."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready
from prometheus_client import start_http_server

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("sluice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


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
