from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from jobs.events import KIND
        from streaming.access import stream_kind_permissions

        # A job's progress stream, read with a staff session, is the job's: view_job.
        stream_kind_permissions(KIND, "jobs.view_job")
