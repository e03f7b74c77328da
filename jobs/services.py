"""Writes of the jobs app: submit (with idempotency keys), cancel, replay dead tasks."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import exceptions

from inference.catalog import selectors as inference_selectors
from inference.catalog.router import NoRoute, route
from inference.models import Model, ModelVersion
from inference.transport.unary_flow import unroutable
from jobs import bulk, events, leases, runner
from jobs.inputs import Inputs
from jobs.models import ACTIVE_JOB, IdempotencyKey, Job, JobStatus, Task, TaskStatus
from tenants.models import Tenant

log = logging.getLogger(__name__)


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

    def __init__(self, wait: int = 1) -> None:
        super().__init__()
        self.wait = wait  # seconds: REST framework sends them as Retry-After


class IdempotencyKeyReused(exceptions.APIException):
    status_code = 422
    default_detail = "This Idempotency-Key was used with a different request body."
    default_code = "idempotency_key_reused"
    problem_slug = "idempotency-key-reused"


class IdempotencyKeyLost(Exception):
    """Another request took the key over before this one's job committed."""


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
        raise unroutable(exc) from exc
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
class Submitted:
    """The answer to a submission: a new job's, or (``replayed``) the first answer under its key."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def job_submit(
    *,
    tenant: Tenant,
    request: JobRequest,
    key: str | None,
    describe: Callable[[Job], dict[str, Any]],
) -> Submitted:
    """Create the job, or answer from the first request under ``key``. ``describe`` renders a
    new job as the response body, which is stored under the key in the job's own transaction."""
    if key is None:
        with transaction.atomic():
            job = job_create(tenant=tenant, request=request)
            return Submitted(status=201, body=describe(job))
    # A second round only when another request took our key over while we worked (our lease
    # lapsed): then the key's new owner decides the answer, as for any later request.
    for _ in range(2):
        claim = idempotency_begin(tenant=tenant, key=key, fingerprint=request.fingerprint())
        if isinstance(claim, Submitted):
            return claim
        try:
            return _create_under(claim, tenant=tenant, request=request, describe=describe)
        except IdempotencyKeyLost:
            continue
        except BaseException:
            idempotency_abandon(claim)
            raise
        finally:
            leases.keeper.release(claim.pk)
    raise IdempotencyKeyInFlight()


def _create_under(
    claim: IdempotencyKey,
    *,
    tenant: Tenant,
    request: JobRequest,
    describe: Callable[[Job], dict[str, Any]],
) -> Submitted:
    with transaction.atomic():
        job = job_create(tenant=tenant, request=request)
        body = describe(job)
        # The fence: the answer is written under *this* claim (its id) in the job's own
        # transaction. A request that took the key over deleted the row first, so this
        # matches nothing and the job is rolled back; if this UPDATE wins, the row is
        # answered (locked until the commit) and a takeover's conditional DELETE then matches
        # nothing. Either way one job per key.
        answered = IdempotencyKey.objects.filter(pk=claim.pk, response_status__isnull=True).update(
            job=job, response_status=201, response_body=body
        )
        if not answered:
            raise IdempotencyKeyLost()
    return Submitted(status=201, body=body)


def idempotency_begin(*, tenant: Tenant, key: str, fingerprint: str) -> IdempotencyKey | Submitted:
    """Claim the key for this request (leased to this process), or answer from an earlier one:
    its stored response (same body), 422 (another body) or 409 (still in flight)."""
    ttl = timedelta(hours=settings.JOBS_IDEMPOTENCY_TTL_HOURS)
    for _ in range(3):
        now = timezone.now()
        try:
            # Its own transaction, committed at once: a concurrent request must see it.
            with transaction.atomic():
                row = IdempotencyKey.objects.create(
                    tenant=tenant,
                    key=key,
                    fingerprint=fingerprint,
                    created_at=now,
                    expires_at=now + ttl,
                    lease_until=now + leases.lease_length(),
                )
            leases.keeper.hold(row.pk)
            return row
        except IntegrityError:
            found = IdempotencyKey.objects.filter(tenant=tenant, key=key).first()
        if found is None:
            continue  # deleted (expired or abandoned) between our insert and read
        # A lapsed lease means the holder's process stopped renewing it (it died), unless the
        # holder is a request of this very process (its renewal was only slow).
        lapsed = found.in_flight and found.lease_until < now and not leases.keeper.holds(found.pk)
        if found.expires_at <= now or lapsed:
            # Conditional, re-checked under the row's lock: two requests taking over the same
            # key delete it once, and a holder that renewed or answered meanwhile keeps it.
            stale = Q(expires_at__lte=now) | Q(response_status__isnull=True, lease_until__lt=now)
            IdempotencyKey.objects.filter(stale, pk=found.pk).delete()
            continue
        if found.fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        if found.in_flight:
            # By then the holder has answered, or renewed its lease (still working), or died
            # and the key is free. At most one lease: a renewal made after our clock reading
            # (or another host's clock) may put it a little further.
            left = min(
                (found.lease_until - now).total_seconds(), leases.lease_length().total_seconds()
            )
            raise IdempotencyKeyInFlight(wait=max(1, math.ceil(left)))
        return Submitted(
            status=found.response_status or 200,
            body=dict(found.response_body or {}),
            replayed=True,
        )
    raise IdempotencyKeyInFlight()


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
