from __future__ import annotations

import logging
import threading
from typing import Any

from django.apps import AppConfig

log = logging.getLogger(__name__)


class InferenceConfig(AppConfig):
    name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import worker_ready
        from django.db.models.signals import post_delete, post_save

        from inference.catalog import selectors
        from inference.models import Model, ModelEvent, ModelVersion

        worker_ready.connect(_preload_on_worker_ready, weak=False)
        # Every registry change writes a row of one of these (routing changes that use
        # update() record a ModelEvent), so a change made here is routed at once.
        for sender in (Model, ModelVersion, ModelEvent):
            post_save.connect(selectors.forget_routes, sender=sender, weak=False)
            post_delete.connect(selectors.forget_routes, sender=sender, weak=False)
        # Celery's autodiscovery finds ``inference.tasks`` only; the media producer lives apart.
        from inference.media import tasks as _media_tasks  # noqa: F401
        from inference.media.services import DEFAULT_MODELS
        from inference.transport.streams import KINDS
        from streaming.access import stream_kind_permissions

        # A model's output streams, read with a staff session (streaming.access).
        for kind in (*KINDS, *DEFAULT_MODELS):
            stream_kind_permissions(kind, "inference.view_model")

        from django.conf import settings

        from inference.registry.health_metrics import VersionHealthCollector
        from inference.transport import admission
        from plumbing.metrics import register_shared_collector
        from streaming.metrics import register_gauge

        # /metrics reads the versions' health; the metrics stream's samples carry the
        # per-queue in-flight counts (neither streaming nor plumbing imports inference).
        register_shared_collector(VersionHealthCollector)
        queues = list(settings.INFERENCE_QUEUES)
        register_gauge("in_flight", lambda: {q: admission.in_flight(q) for q in queues})
        # /readyz counts the workers of the queues the active versions use (plumbing.presence).
        from plumbing import presence

        if selectors.active_queues not in presence.needed_sources:
            presence.needed_sources.append(selectors.active_queues)


def _preload_on_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    """``celery worker`` is consuming: close the circuits a worker outage opened on its queues
    (they said nothing of the versions, and a worker serves again now), then warm the models
    of its queues, on a side thread, so the first requests do not pay for loading (the
    consumer keeps serving meanwhile)."""
    from django.conf import settings

    from inference.worker import outcomes, predict

    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    if not queues:
        return

    def run() -> None:
        closed = outcomes.outage_over(queues)
        if closed:
            log.info("closed the circuits a worker outage opened: %s", ", ".join(closed))
        if settings.INFERENCE_PRELOAD:
            loaded = predict.preload(queues)
            log.info("preloaded %d model version(s): %s", len(loaded), ", ".join(loaded) or "-")

    threading.Thread(target=run, name="inference-preload", daemon=True).start()
