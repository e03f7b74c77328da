"""``manage.py jobstatus ID``: a job's state, counts, timings and why its tasks died."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count

from jobs.models import Job, TaskStatus


class Command(BaseCommand):
    help = "Show a batch job's progress and its dead tasks' reasons."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            job = (
                Job.objects.select_related("tenant", "model", "version")
                .filter(pk=opts["job_id"])
                .first()
            )
        except ValidationError:
            job = None
        if job is None:
            raise CommandError(f"No job {opts['job_id']}.")
        elapsed = (job.finished_at or job.progressed_at or job.created_at) - job.created_at
        rows = [
            ("job", str(job.pk)),
            ("tenant", job.tenant.slug),
            ("model", f"{job.model.name}:{job.version.version}"),
            ("status", job.status),
            ("progress", f"{job.done}/{job.total} ({100 * job.progress:.1f}%)"),
            ("succeeded", str(job.succeeded)),
            ("failed (dead)", str(job.failed)),
            ("cancelled", str(job.cancelled)),
            ("chunks", f"{job.next_chunk} of {job.chunks} sent, {job.chunk_size} inputs each"),
            ("max attempts", str(job.max_attempts)),
            ("created", job.created_at.isoformat()),
            ("finished", job.finished_at.isoformat() if job.finished_at else "-"),
            ("elapsed", f"{elapsed.total_seconds():.1f} s"),
            ("in the model", f"{job.model_seconds:.2f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            self.stdout.write(f"{name:<{width}}  {value}")
        reasons = (
            job.tasks.filter(status=TaskStatus.DEAD)
            .values("last_error")
            .annotate(n=Count("id"))
            .order_by("-n")[:10]
        )
        for reason in reasons:
            self.stdout.write(f"dead x{reason['n']}: {reason['last_error'][:200]}")
