"""Process start-up tuning shared by the WSGI, ASGI and worker entry points."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects() -> None:
    """Load what every request will use, then move every object alive now out of the cyclic
    garbage collector's reach (:func:`gc.freeze`).

    A serving process holds ~130,000 long-lived objects (Django, DRF, Celery, kombu, redis);
    without this every full collection walks all of them, and under load the collector —
    triggered by whatever allocation comes next — was the largest single item in the web
    process's profile (docs/performance-history.md). Frozen objects are still freed normally when
    their reference count drops; they are only never scanned for cycles.
    """
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports every view module now, not per worker request
    gc.collect()
    gc.freeze()
    log.debug("froze %d start-up objects", gc.get_freeze_count())
