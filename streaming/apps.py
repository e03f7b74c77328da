from __future__ import annotations

from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import worker_init

        from streaming.loglines import connect_celery_signals
        from streaming.metrics import start_recorder

        connect_celery_signals()
        # A worker's batch sizes reach the metrics stream through its recorder.
        worker_init.connect(lambda **kwargs: start_recorder(), weak=False)
