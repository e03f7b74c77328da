"""``manage.py submitjob FILE --model NAME [--follow]``: submit a JSONL/CSV/JSON file as a job
for a tenant; ``--follow`` shows a live progress bar fed by the job's event stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.http import Http404
from rest_framework.exceptions import APIException, ValidationError

from inference.catalog import selectors as inference_selectors
from jobs import follow, inputs, services
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Submit a file of inputs (JSONL, CSV or a JSON list) as a batch job."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--model", required=True)
        parser.add_argument(
            "--model-version", default=None, help="a version label (default: routed)"
        )
        parser.add_argument("--tenant", default="demo", help="tenant slug (default: demo)")
        parser.add_argument("--chunk-size", type=int, default=settings.JOBS_CHUNK_SIZE)
        parser.add_argument("--max-attempts", type=int, default=settings.JOBS_MAX_ATTEMPTS)
        parser.add_argument("--priority", type=int, default=0, choices=range(10))
        parser.add_argument("--follow", action="store_true", help="show progress until done")

    def handle(self, *args: Any, **opts: Any) -> None:
        tenant = Tenant.objects.filter(slug=opts["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant {opts['tenant']!r}.")
        path: Path = opts["file"]
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from exc
        if opts["follow"]:
            follow.ensure_worker()  # embedded default: run the job in this process
        try:
            items = inputs.parse_bytes(raw, name=path.name, content_type="", field="file")
            model = inference_selectors.model_for_tenant(opts["model"], tenant)
            request = services.JobRequest(
                model=model,
                version=services.job_version(model, opts["model_version"]),
                inputs=inputs.Inputs(items=items, source=f"file:{path.name}"[:300], digest=""),
                priority=opts["priority"],
                chunk_size=max(1, opts["chunk_size"]),
                max_attempts=max(1, opts["max_attempts"]),
                options={},
            )
            job = services.job_create(tenant=tenant, request=request)
        except ValidationError as exc:
            raise CommandError(f"Invalid job: {exc.detail}") from exc
        except APIException as exc:
            raise CommandError(str(exc.detail)) from exc
        except Http404 as exc:
            raise CommandError(f"No model {opts['model']!r} for {tenant.slug}.") from exc
        self.stderr.write(f"job {job.pk}: {job.total} inputs in {job.chunks} chunks")
        self.stdout.write(str(job.pk))
        if opts["follow"]:
            final = follow.follow(job, out=self.stderr)
            self.stderr.write(
                f"job {job.pk} {final.status}: {final.succeeded} succeeded, "
                f"{final.failed} failed, {final.cancelled} cancelled of {final.total}"
            )
            if final.failed:
                raise CommandError(f"{final.failed} tasks are dead; see manage.py jobstatus")
