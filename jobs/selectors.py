"""Reads of the jobs app: a tenant's jobs, a job's results (streamed), dead tasks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.core.files.storage import default_storage
from django.db.models import QuerySet

from jobs.models import Job, Task, TaskStatus

RESULT_FIELDS = ("id", "index", "status", "attempts", "result", "result_ref", "last_error")


def jobs_all() -> QuerySet[Job]:
    return Job.objects.select_related("model", "version")


def task_result(result: Any, ref: str) -> Any:
    """A task's result, read from object storage when it was too large for the row."""
    if not ref:
        return result
    with default_storage.open(ref, "rb") as fh:
        return json.loads(fh.read())


def results_ndjson(job: Job, *, status: str | None = None) -> Iterator[bytes]:
    """One JSON line per task in index order, from a server-side cursor (memory stays flat
    whatever the job's size)."""
    rows = Task.objects.filter(job=job).order_by("index")
    if status:
        rows = rows.filter(status=status)
    for task_id, index, state, attempts, result, ref, error in rows.values_list(
        *RESULT_FIELDS
    ).iterator(chunk_size=2000):
        line: dict[str, Any] = {"task": task_id, "index": index, "status": state}
        if state == TaskStatus.SUCCEEDED:
            line["result"] = task_result(result, ref)
        elif error:
            line["error"] = error
            line["attempts"] = attempts
        yield json.dumps(line, separators=(",", ":")).encode() + b"\n"


def dead_tasks() -> QuerySet[Task]:
    return Task.objects.filter(status=TaskStatus.DEAD).order_by("job_id", "index")
