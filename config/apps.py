from __future__ import annotations

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project package as an app, for commands that span the other apps."""

    name = "config"
    label = "sluice"

    def ready(self) -> None:
        # The metrics stream's per-queue in-flight counts come from inference; the project
        # wires them in so the streaming app imports none of its producers.
        from django.conf import settings

        from inference import backpressure
        from streaming.metrics import register_gauge

        queues = list(settings.INFERENCE_QUEUES)
        register_gauge("in_flight", lambda: {q: backpressure.in_flight(q) for q in queues})
