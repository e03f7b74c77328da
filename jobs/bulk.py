"""The three statements a job's throughput hangs on, in bulk: insert its tasks, claim a chunk,
write a chunk's results.

On PostgreSQL each is one statement of plain SQL: ``COPY`` for the task rows; one
``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`` for a claim; one
``UPDATE … FROM unnest(…)`` for a chunk's results, conditional on the task still being open.
The ORM's ``bulk_create`` and ``Case(When(…))`` spend more Python time per task than the
120,000 tasks/min target allows (figures in docs/performance-history.md). Other databases (SQLite:
the embedded default, one process) take the ORM path, with the same semantics; both are run by
the test suite.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Case, F, JSONField, Q, Value, When
from django.db.models import CharField as CharFieldType

from jobs.models import OPEN_TASK, Job, Task, TaskStatus

Claimed = tuple[int, int, Any, int]  # task id, index, input, this attempt's number


def fast() -> bool:
    return connection.vendor == "postgresql"


def insert_tasks(job: Job, items: Iterable[dict[str, Any]], *, batch: int) -> None:
    size = job.chunk_size
    if not fast():
        Task.objects.bulk_create(
            (Task(job=job, index=i, chunk=i // size, input=item) for i, item in enumerate(items)),
            batch_size=batch,
        )
        return
    columns = "job_id, index, chunk, status, input, attempts, last_error, result_ref"
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: COPY is not in the DB-API
        with raw.copy(f"COPY jobs_task ({columns}) FROM STDIN") as copy:
            for i, item in enumerate(items):
                copy.write_row(
                    (job.pk, i, i // size, TaskStatus.QUEUED, json.dumps(item), 0, "", "")
                )


def claim(job_id: str, chunk: int, now: datetime, stale: datetime) -> list[Claimed]:
    """Mark the chunk's runnable tasks running (one more attempt) and return them. The
    caller runs this in a transaction."""
    if fast():
        with connection.cursor() as cursor:
            cursor.execute(
                """
                UPDATE jobs_task SET status = 'running', claimed_at = %s,
                       attempts = attempts + 1
                 WHERE id IN (
                       SELECT id FROM jobs_task
                        WHERE job_id = %s AND chunk = %s
                          AND ((status = 'queued' AND (not_before IS NULL OR not_before <= %s))
                               OR (status = 'running' AND claimed_at < %s))
                          FOR UPDATE SKIP LOCKED)
             RETURNING id, index, input, attempts
                """,
                [now, job_id, chunk, now, stale],
            )
            rows = cursor.fetchall()
        rows.sort(key=lambda r: r[1])
        return [
            (r[0], r[1], json.loads(r[2]) if isinstance(r[2], str) else r[2], r[3]) for r in rows
        ]
    runnable = Q(status=TaskStatus.QUEUED) & (Q(not_before__isnull=True) | Q(not_before__lte=now))
    runnable |= Q(status=TaskStatus.RUNNING, claimed_at__lt=stale)
    found = list(
        Task.objects.select_for_update(skip_locked=True)
        .filter(runnable, job_id=job_id, chunk=chunk)
        .order_by("index")
        .values_list("id", "index", "input", "attempts")
    )
    if found:
        Task.objects.filter(id__in=[r[0] for r in found]).update(
            status=TaskStatus.RUNNING, claimed_at=now, attempts=F("attempts") + 1
        )
    return [(r[0], r[1], r[2], r[3] + 1) for r in found]


def write_results(results: Sequence[tuple[int, str, str]], now: datetime, seq: int) -> int:
    """``(task id, result as JSON text, storage name or "")`` → succeeded, for tasks still
    open; returns how many rows changed (a task someone else finished already is not one).
    A result stored under a name has ``null`` as its text and no result in the row. ``seq``:
    this commit's ``finish_seq`` (the caller holds the job's lock)."""
    if not results:
        return 0
    if fast():
        # One JSON document for the whole chunk, parsed by PostgreSQL: no per-row adaptation.
        payload = (
            "["
            + ",".join(
                f'{{"id":{tid},"result":{raw},"ref":{json.dumps(ref)}}}'
                for tid, raw, ref in results
            )
            + "]"
        )
        with connection.cursor() as cursor:
            cursor.execute(
                """
                UPDATE jobs_task AS t
                   SET status = 'succeeded', result = CASE WHEN v.ref = '' THEN v.result END,
                       result_ref = v.ref, last_error = '', finished_at = %s, finish_seq = %s
                  FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, result jsonb, ref text)
                 WHERE t.id = v.id AND t.status IN ('queued', 'running')
                """,
                [now, seq, payload],
            )
            return int(cursor.rowcount)
    return int(
        Task.objects.filter(id__in=[r[0] for r in results], status__in=OPEN_TASK).update(
            status=TaskStatus.SUCCEEDED,
            result=Case(
                *[
                    When(
                        id=tid,
                        then=Value(None if ref else json.loads(raw), output_field=JSONField()),
                    )
                    for tid, raw, ref in results
                ],
                output_field=JSONField(),
            ),
            result_ref=Case(
                *[When(id=tid, then=Value(ref)) for tid, _, ref in results],
                output_field=CharFieldType(),
            ),
            last_error="",
            finished_at=now,
            finish_seq=seq,
        )
    )
