"""Reads of the jobs app: a tenant's jobs, a job's results (streamed, or followed in commit
order), dead tasks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.core.files.storage import default_storage
from django.db.models import BooleanField, QuerySet
from django.db.models.expressions import RawSQL

from jobs.models import ACTIVE_JOB, FINISHED_TASK, Job, Task, TaskStatus

RESULT_FIELDS = ("id", "index", "status", "attempts", "result", "result_ref", "last_error")


def jobs_all() -> QuerySet[Job]:
    return Job.objects.select_related("model", "version")


def task_result(result: Any, ref: str) -> Any:
    """A task's result, read from object storage when it was too large for the row."""
    if not ref:
        return result
    with default_storage.open(ref, "rb") as fh:
        return json.loads(fh.read())


def result_line(row: tuple[Any, ...]) -> dict[str, Any]:
    """One task's NDJSON line from a row of ``RESULT_FIELDS``: ``{"task", "index", "status"}``
    and ``"result"``, or ``"error"`` and ``"attempts"``."""
    task_id, index, state, attempts, result, ref, error = row
    line: dict[str, Any] = {"task": task_id, "index": index, "status": state}
    if state == TaskStatus.SUCCEEDED:
        line["result"] = task_result(result, ref)
    elif error:
        line["error"] = error
        line["attempts"] = attempts
    return line


def ndjson(line: dict[str, Any]) -> bytes:
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def results_ndjson(job: Job, *, status: str | None = None) -> Iterator[bytes]:
    """One JSON line per task in index order, from a server-side cursor (memory stays flat
    whatever the job's size)."""
    rows = Task.objects.filter(job=job).order_by("index")
    if status:
        rows = rows.filter(status=status)
    for row in rows.values_list(*RESULT_FIELDS).iterator(chunk_size=2000):
        yield ndjson(result_line(row))


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in a job's finished tasks in commit order: the ``(finish_seq, task id)`` of
    the last one read. ``Cursor()`` is before the first. Its token is ``<seq>-<task>``."""

    seq: int = 0
    task: int = 0

    @property
    def token(self) -> str:
        return f"{self.seq}-{self.task}"

    @classmethod
    def parse(cls, token: str) -> Cursor:
        """``<seq>-<task>`` (both non-negative integers that fit a database's bigint);
        ValueError otherwise."""
        seq, dash, task = token.partition("-")
        if not (dash and seq.isascii() and seq.isdigit() and task.isascii() and task.isdigit()):
            raise ValueError(f"not a results cursor: {token!r}")
        if max(int(seq), int(task)) >= 2**63:
            raise ValueError(f"not a results cursor: {token!r}")
        return cls(int(seq), int(task))


def results_after(
    job_id: Any, after: Cursor, *, limit: int = 500
) -> list[tuple[Cursor, tuple[Any, ...]]]:
    """The next ``limit`` finished tasks of the job after ``after`` in commit order, as
    ``(cursor, row of RESULT_FIELDS)`` (:func:`result_line` makes the line). Exactly once
    across calls: ``finish_seq`` is handed out in commit order under the job's lock
    (Task.finish_seq), so a row that a later call sees and an earlier one did not always lies
    after the earlier one's last cursor."""
    # A row comparison, so that the index (job, finish_seq, id) starts the scan at the cursor:
    # with "seq > s OR (seq = s AND id > t)" every page of a big commit (a cancel of a million
    # queued tasks is one) would scan that commit's rows again from its first.
    past = RawSQL(
        '("jobs_task"."finish_seq", "jobs_task"."id") > (%s, %s)',
        (after.seq, after.task),
        output_field=BooleanField(),
    )
    rows = Task.objects.filter(past, job_id=job_id, status__in=FINISHED_TASK).order_by(
        "finish_seq", "id"
    )
    return [
        (Cursor(row[-1], row[0]), row[:-1])
        for row in rows.values_list(*RESULT_FIELDS, "finish_seq")[:limit]
    ]


def job_active(job_id: Any) -> bool:
    """Whether the job may still finish tasks (queued or running); a deleted job is not."""
    status = Job.objects.filter(pk=job_id).values_list("status", flat=True).first()
    return status in ACTIVE_JOB


def dead_tasks() -> QuerySet[Task]:
    return Task.objects.filter(status=TaskStatus.DEAD).order_by("job_id", "index")
