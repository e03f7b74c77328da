"""Writes of the jobs app: submit (with idempotency keys), cancel, replay dead tasks."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import exceptions

from inference import selectors as inference_selectors
from inference.models import Model, ModelVersion
from inference.router import NoRoute, route
from inference.serving import ModelUnavailable
from jobs import bulk, events, runner
from jobs.inputs import Inputs
from jobs.models import ACTIVE_JOB, IdempotencyKey, Job, JobStatus, Task, TaskStatus
from tenants.models import Tenant

log = logging.getLogger(__name__)
# An in-flight key whose request died (process killed) is taken over after this long.
IDEMPOTENCY_ABANDONED_SECONDS = 600


class JobConflict(exceptions.APIException):
    status_code = 409
    default_detail = "The job is not in a state that allows this."
    default_code = "job_conflict"
    problem_slug = "job-conflict"


class IdempotencyKeyInFlight(exceptions.APIException):
    status_code = 409
    default_detail = "A request with this Idempotency-Key is still being processed; retry later."
    default_code = "idempotency_key_in_flight"
    problem_slug = "idempotency-key-in-flight"
    wait = 1


class IdempotencyKeyReused(exceptions.APIException):
    status_code = 422
    default_detail = "This Idempotency-Key was used with a different request body."
    default_code = "idempotency_key_reused"
    problem_slug = "idempotency-key-reused"


@dataclass(frozen=True)
class JobRequest:
    """A validated submission, before anything is written."""

    model: Model
    version: ModelVersion
    inputs: Inputs
    priority: int
    chunk_size: int
    max_attempts: int
    options: dict[str, Any]

    def fingerprint(self) -> str:
        canonical = {
            "model": self.model.name,
            "version": self.version.version,
            "inputs": self.inputs.digest,
            "priority": self.priority,
            "chunk_size": self.chunk_size,
            "max_attempts": self.max_attempts,
            "options": self.options,
        }
        raw = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()


def job_version(model: Model, version: str | None) -> ModelVersion:
    """The version a job runs on: the one named, else the router's choice (the stable one or
    a canary by weight), pinned for the whole job."""
    try:
        plan = route(model.name, inference_selectors.candidates(model), version=version)
    except NoRoute as exc:
        raise ModelUnavailable.no_route(exc) from exc
    return inference_selectors.version_of(model, plan.primary.id)


def job_create(*, tenant: Tenant, request: JobRequest) -> Job:
    """Job and Task rows in bulk, in one transaction; the first window of chunks is sent and
    the event stream opened when it commits."""
    items = request.inputs.items
    size = request.chunk_size
    with transaction.atomic():
        job = Job.objects.create(
            tenant=tenant,
            model=request.model,
            version=request.version,
            priority=request.priority,
            source=request.inputs.source,
            total=len(items),
            chunk_size=size,
            chunks=(len(items) + size - 1) // size,
            max_attempts=request.max_attempts,
            options=request.options,
        )
        bulk.insert_tasks(job, items, batch=settings.JOBS_INSERT_BATCH)
        chunks = runner.open_window(job)
        job.save(update_fields=["next_chunk"])
        transaction.on_commit(lambda: events.stream_open(job))
        runner.send_on_commit(str(job.pk), chunks)
    return job


# --- idempotency keys -------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]


def idempotency_begin(*, tenant: Tenant, key: str, fingerprint: str) -> IdempotencyKey | Replay:
    """Claim the key for this request, or answer from an earlier one: its stored response
    (same body), 422 (another body) or 409 (still in flight)."""
    now = timezone.now()
    ttl = timedelta(hours=settings.JOBS_IDEMPOTENCY_TTL_HOURS)
    for _ in range(3):
        try:
            # Its own transaction, committed at once: a concurrent request must see it.
            with transaction.atomic():
                return IdempotencyKey.objects.create(
                    tenant=tenant,
                    key=key,
                    fingerprint=fingerprint,
                    created_at=now,
                    expires_at=now + ttl,
                )
        except IntegrityError:
            found = IdempotencyKey.objects.filter(tenant=tenant, key=key).first()
        if found is None:
            continue  # deleted (expired or abandoned) between our insert and read
        abandoned = found.in_flight and found.created_at < now - timedelta(
            seconds=IDEMPOTENCY_ABANDONED_SECONDS
        )
        if found.expires_at <= now or abandoned:
            # Conditional: two requests taking over the same stale key delete it once.
            IdempotencyKey.objects.filter(pk=found.pk, created_at=found.created_at).delete()
            continue
        if found.fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        if found.in_flight:
            raise IdempotencyKeyInFlight()
        return Replay(status=found.response_status or 200, body=dict(found.response_body or {}))
    raise IdempotencyKeyInFlight()


def idempotency_complete(row: IdempotencyKey, *, job: Job, status: int, body: Any) -> None:
    IdempotencyKey.objects.filter(pk=row.pk).update(
        job=job, response_status=status, response_body=body
    )


def idempotency_abandon(row: IdempotencyKey) -> None:
    """The request failed before a job existed: free the key so a corrected retry can use it."""
    IdempotencyKey.objects.filter(pk=row.pk, response_status__isnull=True).delete()


def idempotency_expire() -> int:
    deleted, _ = IdempotencyKey.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted


# --- cancel and replay ------------------------------------------------------------------------


def job_cancel(*, job: Job) -> Job:
    """Queued tasks are cancelled and never run; tasks a worker is running finish. The job
    is cancelled at once."""
    now = timezone.now()
    with transaction.atomic():
        # Locks the job: a chunk finishing now must not finalize it under our feet.
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status not in ACTIVE_JOB:
            raise JobConflict(f"The job is already {locked.status}.")
        # Under the job's lock: this commit's number follows every earlier one's.
        cancelled = Task.objects.filter(job=locked, status=TaskStatus.QUEUED).update(
            status=TaskStatus.CANCELLED, finished_at=now, finish_seq=locked.finish_seq + 1
        )
        if cancelled:
            locked.finish_seq += 1
        locked.cancelled += cancelled
        locked.status = JobStatus.CANCELLED
        locked.finished_at = now
        locked.save(update_fields=["cancelled", "status", "finished_at", "finish_seq"])
        transaction.on_commit(lambda: events.publish_end(locked))
    return locked


def dead_replay(*, job: Job, task_ids: Sequence[int] | None = None) -> int:
    """Give dead tasks (all of the job's, or these) a fresh set of attempts; returns how many."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.status == JobStatus.CANCELLED:
            raise JobConflict("A cancelled job's tasks cannot be replayed.")
        dead = Task.objects.filter(job=locked, status=TaskStatus.DEAD)
        if task_ids is not None:
            dead = dead.filter(pk__in=list(task_ids))
        chunks = sorted(set(dead.values_list("chunk", flat=True)))
        replayed = dead.update(
            status=TaskStatus.QUEUED, attempts=0, not_before=None, finished_at=None
        )
        if not replayed:
            return 0
        reopened = locked.status not in ACTIVE_JOB
        locked.failed -= replayed
        locked.status = JobStatus.RUNNING
        locked.finished_at = None
        locked.progressed_at = timezone.now()
        locked.save(update_fields=["failed", "status", "finished_at", "progressed_at"])
        if reopened:
            transaction.on_commit(lambda: events.stream_open(locked))
        transaction.on_commit(lambda: events.publish_progress(locked))
        runner.send_on_commit(str(locked.pk), chunks)
    log.info("job %s: replayed %d dead tasks", locked.pk, replayed)
    return replayed
