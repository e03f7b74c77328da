"""``manage.py replaydead JOB_ID [--task ID ...]``: give dead tasks a fresh set of attempts."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.exceptions import APIException

from jobs import services
from jobs.models import Job


class Command(BaseCommand):
    help = "Replay a job's dead tasks (all of them, or those given with --task)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id")
        parser.add_argument("--task", type=int, action="append", dest="tasks", metavar="ID")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            job = Job.objects.filter(pk=opts["job_id"]).first()
        except ValidationError:
            job = None
        if job is None:
            raise CommandError(f"No job {opts['job_id']}.")
        try:
            count = services.dead_replay(job=job, task_ids=opts["tasks"])
        except APIException as exc:
            raise CommandError(str(exc.detail)) from exc
        self.stdout.write(f"{count} dead tasks of job {job.pk} replayed")
