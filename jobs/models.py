"""Batch jobs: a Job of many Tasks, and the idempotency keys of job submissions.

PostgreSQL is the source of truth. Every state change a redelivered or concurrent message could
repeat is a conditional UPDATE (``… WHERE status IN (…)``), so the database, not the broker,
decides what happened exactly once: a task's result, a job's counts, a job's finalization.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    CANCELLED = "cancelled"


ACTIVE_JOB = (JobStatus.QUEUED, JobStatus.RUNNING)
TERMINAL_JOB = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.PARTIAL, JobStatus.CANCELLED)


class TaskStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


OPEN_TASK = (TaskStatus.QUEUED, TaskStatus.RUNNING)
FINISHED_TASK = (TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.CANCELLED)


class Job(models.Model):
    """Many inputs run through one model version. Counts are maintained by atomic UPDATEs as
    chunks finish (the fan-in); the job is finalized by the one UPDATE that moves it out of
    queued/running."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="jobs")
    model = models.ForeignKey("inference.Model", on_delete=models.PROTECT, related_name="jobs")
    version = models.ForeignKey(
        "inference.ModelVersion", on_delete=models.PROTECT, related_name="jobs"
    )
    status = models.CharField(
        max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )
    priority = models.SmallIntegerField(
        default=0,
        help_text="0-9: this many more of its chunks are queued at once (a bigger share).",
    )
    source = models.CharField(max_length=300, blank=True, help_text="Where the inputs came from.")
    total = models.PositiveIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0, help_text="Tasks dead after max_attempts.")
    cancelled = models.PositiveIntegerField(default=0)
    chunk_size = models.PositiveIntegerField(default=500)
    chunks = models.PositiveIntegerField(default=0)
    # Chunks [0, next_chunk) have been sent to the broker at least once (windowed dispatch).
    next_chunk = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    # Numbers the commits that finish tasks of this job (see Task.finish_seq): the last one's.
    finish_seq = models.PositiveIntegerField(default=0)
    options = models.JSONField(default=dict, blank=True)
    model_seconds = models.FloatField(default=0, help_text="Time spent inside the model.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    progressed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"job {self.short_id}"

    @property
    def short_id(self) -> str:
        return self.id.hex[:8]

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def progress(self) -> float:
        return round(self.done / self.total, 4) if self.total else 1.0

    @property
    def stream_id(self) -> str:
        return f"job-{self.id.hex}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_JOB

    def counts(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "total": self.total,
            "done": self.done,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
        }


class Task(models.Model):
    """One input of a job. ``result`` holds small results; a large one lives in object storage
    under ``result_ref``."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="tasks")
    index = models.PositiveIntegerField()
    chunk = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.QUEUED)
    input = models.JSONField()
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True)
    result_ref = models.CharField(max_length=300, blank=True)
    # Not run before this (retry backoff); None: at once.
    not_before = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The number of the commit that finished it (the job's finish_seq then). Every such commit
    # holds the job's row lock, so the numbers are handed out in commit order: a reader that
    # has seen every row up to (finish_seq, id) can never later find a row below that, as it
    # could with finished_at (a timestamp taken before a commit that lands after later ones).
    # 0 for tasks not finished yet, and for those finished before the column existed.
    finish_seq = models.PositiveIntegerField(default=0, db_default=0)

    class Meta:
        ordering = ("job", "index")
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="jobs_task_unique_index")
        ]
        indexes = [
            models.Index(fields=["job", "chunk"], name="jobs_task_chunk"),
            models.Index(
                fields=["job", "status"],
                name="jobs_task_dead",
                condition=models.Q(status="dead"),
            ),
            # Following a job's results in commit order (jobs.selectors.results_after). Rows
            # enter it when they finish, so inserting a job's tasks does not touch it.
            models.Index(
                fields=["job", "finish_seq", "id"],
                name="jobs_task_finished",
                condition=models.Q(status__in=["succeeded", "dead", "cancelled"]),
            ),
        ]

    def __str__(self) -> str:
        return f"task {self.index} of {self.job}"


class DeadTask(Task):
    """The dead-letter queue: tasks that exhausted their attempts (an admin view of Task)."""

    class Meta:
        proxy = True
        verbose_name = "dead task"


class IdempotencyKey(models.Model):
    """One ``Idempotency-Key`` of one tenant (IETF draft-ietf-httpapi-idempotency-key-header).

    The row is inserted (committed) before the job is created, so a concurrent request with the
    same key finds it and gets 409 while the first is in flight; the unique constraint makes
    that insert the one race-free decision. When the job exists, the response is stored and
    replayed to every later request with the same key and the same fingerprint. While in
    flight the row is leased to the claiming request's process (``jobs.leases``)."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    # While in flight: renewed by the claiming request's process; once it has passed, that
    # process is gone (or stalled) and another request may take the key over.
    lease_until = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key"], name="jobs_idempotency_unique_key")
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.tenant_id})"

    @property
    def in_flight(self) -> bool:
        return self.response_status is None
