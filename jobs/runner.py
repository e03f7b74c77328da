"""The worker half of a job: dispatch chunks, run them, count them in, finalize, reconcile.

At-least-once delivery made exactly-once at the result:

- A chunk message names ``(job, chunk)``. Running it *claims* the chunk's runnable tasks
  (queued and due, or running under a lease that expired), predicts them as one batch through
  the worker's model cache, and commits every result with one conditional UPDATE
  (``… WHERE status IN ('queued', 'running')``). A redelivered or duplicated message finds
  nothing to claim, or loses that UPDATE to the first writer, and writes nothing.
- The job's counts move by the rows each UPDATE actually changed, in the same transaction,
  under the job's row lock; the transaction that brings ``done`` to ``total`` finalizes the job
  (one UPDATE out of queued/running), so the finalizer runs exactly once. No chords.
- Dispatch is windowed: a job has at most ``JOBS_WINDOW`` chunks on the broker at a time, and
  each finished chunk sends the next. A small job submitted behind a big one waits for at most
  a window of the big one's chunks, not all of them (fairness without a scheduler).
- The reconciler (celery beat) resends the outstanding chunks of a job that made no progress
  for ``JOBS_LEASE_SECONDS`` (a worker died, a Redis restart lost the messages).

Lock order everywhere: the job row first, then its tasks (claims skip locked tasks).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import exceptions

from inference.catalog import selectors as inference_selectors
from inference.runtimes.base import InvalidInput
from inference.worker import predict
from jobs import bulk, events
from jobs.models import ACTIVE_JOB, OPEN_TASK, Job, JobStatus, Task, TaskStatus
from jobs.validation import validator_for
from plumbing.taskref import task_named

log = logging.getLogger(__name__)


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter (as Celery's ``retry_jitter``): a random delay in
    ``[0, min(cap, base * 2**(attempt-1))]``, at least 0.1 s."""
    ceiling = min(
        settings.JOBS_RETRY_BACKOFF_MAX_SECONDS,
        settings.JOBS_RETRY_BACKOFF_SECONDS * 2 ** max(0, attempt - 1),
    )
    return max(0.1, random.uniform(0, ceiling))


# --- dispatch ---------------------------------------------------------------------------------


def _send(job_id: str, chunks: list[int], *, countdown: float | None = None) -> None:
    options: dict[str, Any] = {"queue": settings.JOBS_QUEUE}
    if countdown:
        options["countdown"] = countdown
    for chunk in chunks:
        task_named("jobs_run_chunk").apply_async(args=(job_id, chunk), **options)  # jobs.tasks


def send_on_commit(job_id: str, chunks: list[int], *, countdown: float | None = None) -> None:
    if chunks:
        transaction.on_commit(lambda: _send(job_id, chunks, countdown=countdown))


def window(job: Job) -> int:
    """Chunks of this job on the broker at once: its share of the workers. A job's priority
    (0-9) widens it by that many chunks."""
    return settings.JOBS_WINDOW + max(0, job.priority)


def open_window(job: Job) -> list[int]:
    """Advance ``next_chunk`` to fill the job's window; the caller holds the job's lock and
    sends the returned chunks when its transaction commits."""
    start = job.next_chunk
    job.next_chunk = min(job.chunks, job.next_chunk + window(job))
    return list(range(start, job.next_chunk))


# --- running a chunk --------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: dict[int, str] = field(default_factory=dict)  # task id → result (JSON text)
    refs: dict[int, str] = field(default_factory=dict)  # task id → storage name of a result
    failed: dict[int, str] = field(default_factory=dict)  # task id → error (retryable)
    invalid: dict[int, str] = field(default_factory=dict)  # task id → error (never retried)
    model_seconds: float = 0.0


def _claim(job_id: str, chunk: int, now: datetime) -> list[bulk.Claimed]:
    """Take the chunk's runnable tasks: queued and due, or running under an expired lease
    (its worker died). Locked rows are skipped: another worker is writing them right now."""
    stale = now - timedelta(seconds=settings.JOBS_LEASE_SECONDS)
    with transaction.atomic():
        claimed = bulk.claim(job_id, chunk, now, stale)
        if claimed:
            Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
                status=JobStatus.RUNNING, started_at=now
            )
    return claimed


def _store_large(job: Job, task_id: int, index: int, result: Any) -> tuple[str, str]:
    """A result over ``JOBS_RESULT_INLINE_MAX_BYTES`` goes to object storage under a name of
    its own (a duplicate run overwrites it with the same bytes)."""
    raw = json.dumps(result, separators=(",", ":"))
    if len(raw) <= settings.JOBS_RESULT_INLINE_MAX_BYTES:
        return raw, ""
    name = f"jobs/{job.pk.hex}/results/{index}.json"
    if default_storage.exists(name):
        default_storage.delete(name)
    saved = default_storage.save(name, ContentFile(raw.encode()))
    return "", saved


# What a tenant reads in a failed task's error: fixed texts, never an exception's (the worker
# logs that with the job and task ids).
MODEL_UNAVAILABLE = "model unavailable: the version failed to load (see the worker log)"
ENGINE_ERROR = "engine error: the model failed on this input (see the worker log)"


def _predict(job: Job, claimed: list[tuple[int, int, Any, int]]) -> Outcome:
    outcome = Outcome()
    if not claimed:
        return outcome
    try:
        spec = inference_selectors.version_spec(job.version_id)
        runtime = predict.model_cache().get(spec).runtime
    except Exception:  # a load failure is every task's (retried) failure
        # The engine's text stays in the worker's log: tenants read last_error (docs/errors.md).
        log.exception("job %s: version %s failed to load", job.pk, job.version_id)
        for task_id, *_ in claimed:
            outcome.failed[task_id] = MODEL_UNAVAILABLE
        return outcome
    validate = validator_for(dict(job.version.input_schema or {}))
    batch: list[tuple[int, int, dict[str, Any]]] = []
    for task_id, index, raw, _attempt in claimed:
        try:
            # The schema's check, then the engine's own (a prompt past the context window).
            batch.append((task_id, index, runtime.check(validate(raw))))
        except exceptions.ValidationError as exc:
            outcome.invalid[task_id] = f"invalid input: {json.dumps(exc.detail)}"[:1000]
        except InvalidInput as exc:
            outcome.invalid[task_id] = f"invalid input: {json.dumps(exc.errors)}"[:1000]
    if not batch:
        return outcome
    started = time.perf_counter()
    answers: list[dict[str, Any] | None]
    try:
        answers = list(runtime.predict([item for _, _, item in batch]))
    except Exception:  # noqa: BLE001 - a model may raise anything; it is isolated below
        # One bad input must not fail its neighbours: run them one by one to find it.
        log.warning("job %s: batch of %d failed; retrying items singly", job.pk, len(batch))
        answers = []
        for task_id, _index, item in batch:
            try:
                answers.append(runtime.predict([item])[0])
            except Exception:  # recorded on the task, retried
                log.exception("job %s task %s: the engine failed on its input", job.pk, task_id)
                answers.append(None)
                outcome.failed[task_id] = ENGINE_ERROR
    outcome.model_seconds = time.perf_counter() - started
    for (task_id, index, _item), answer in zip(batch, answers, strict=True):
        if task_id in outcome.failed:
            continue
        inline, ref = _store_large(job, task_id, index, answer)
        if ref:
            outcome.refs[task_id] = ref
        else:
            outcome.ok[task_id] = inline
    return outcome


def run_chunk(job_id: str, chunk: int) -> int:
    """Run one chunk of a job; returns how many task results this run committed."""
    job = Job.objects.select_related("version").filter(pk=job_id).first()
    if job is None or not job.is_active:
        return 0
    now = timezone.now()
    claimed = _claim(job_id, chunk, now)
    if not claimed:
        return 0
    attempts = {task_id: attempt for task_id, _i, _r, attempt in claimed}
    # A task claimed more often than it may be tried: its earlier runs never finished (the
    # worker was killed or crashed on it). It is not run again: a poison input must not take
    # down worker after worker forever.
    lost = {t[0] for t in claimed if t[3] > job.max_attempts}
    outcome = _predict(job, [t for t in claimed if t[0] not in lost])
    for task_id in lost:
        outcome.invalid[task_id] = (
            f"gave up: {job.max_attempts} attempts did not finish (worker lost or crashed)"
        )
    return commit(job_id, chunk, outcome, attempts)


def commit(job_id: str, chunk: int, outcome: Outcome, attempts: dict[int, int]) -> int:
    """Write one chunk's outcome and count it in, exactly once (see the module docstring)."""
    now = timezone.now()
    with transaction.atomic():
        # Locks the job row: concurrent chunks of a job must not lose each other's counts, and
        # only the one that completes the job may finalize it.
        job = Job.objects.select_for_update().get(pk=job_id)
        open_rows = Task.objects.filter(status__in=OPEN_TASK)
        # Under the job's lock, so these numbers follow commit order (Task.finish_seq).
        seq = job.finish_seq + 1
        written = bulk.write_results(
            [(tid, raw, "") for tid, raw in outcome.ok.items()]
            + [(tid, "null", ref) for tid, ref in outcome.refs.items()],
            now,
            seq,
        )
        dead = 0
        retry_delays: list[float] = []
        failures = {**outcome.failed, **outcome.invalid}
        for task_id, error in failures.items():
            attempt = attempts[task_id]
            if task_id in outcome.invalid or attempt >= job.max_attempts:
                dead += open_rows.filter(id=task_id).update(
                    status=TaskStatus.DEAD, last_error=error, finished_at=now, finish_seq=seq
                )
            else:
                delay = backoff_seconds(attempt)
                if open_rows.filter(id=task_id).update(
                    status=TaskStatus.QUEUED,
                    last_error=error,
                    not_before=now + timedelta(seconds=delay),
                ):
                    retry_delays.append(delay)
        if not (written or dead or retry_delays):
            return 0  # a duplicate run: the first one wrote everything already
        job.succeeded += written
        job.failed += dead
        job.model_seconds += outcome.model_seconds
        job.progressed_at = now
        fields = ["succeeded", "failed", "model_seconds", "progressed_at"]
        if written or dead:
            job.finish_seq = seq
            fields.append("finish_seq")
        to_send: list[int] = []
        if job.next_chunk < job.chunks and job.is_active:
            to_send = [job.next_chunk]
            job.next_chunk += 1
            fields.append("next_chunk")
        finished = job.is_active and job.done >= job.total
        if finished:
            job.status = final_status(job)
            job.finished_at = now
            fields += ["status", "finished_at"]
        job.save(update_fields=fields)
        send_on_commit(str(job.pk), to_send)
        if retry_delays:
            send_on_commit(str(job.pk), [chunk], countdown=min(retry_delays))
        snapshot = Job(**{f.attname: getattr(job, f.attname) for f in Job._meta.concrete_fields})
        if snapshot.is_active or finished:  # a cancelled job's stream has had its end
            transaction.on_commit(lambda: events.publish_progress(snapshot))
        if finished:
            transaction.on_commit(lambda: _finalized(snapshot))
    return written


def final_status(job: Job) -> str:
    if job.failed == 0:
        return JobStatus.SUCCEEDED if job.cancelled == 0 else JobStatus.CANCELLED
    return JobStatus.FAILED if job.succeeded == 0 else JobStatus.PARTIAL


def _finalized(job: Job) -> None:
    """Runs once per job (after the commit that finalized it)."""
    log.info(
        "job %s %s: %d succeeded, %d failed of %d",
        job.pk,
        job.status,
        job.succeeded,
        job.failed,
        job.total,
    )
    events.publish_end(job)


# --- reconciliation ---------------------------------------------------------------------------


def reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Resend the outstanding chunks of every active job that made no progress for a lease
    (its messages were lost or its worker died); finalize a job whose tasks are all done."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.JOBS_LEASE_SECONDS)
    stalled = Job.objects.filter(status__in=ACTIVE_JOB).filter(
        Q(progressed_at__lt=stale) | Q(progressed_at__isnull=True, created_at__lt=stale)
    )
    report = {"jobs": 0, "chunks": 0, "finalized": 0}
    for job_id in stalled.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            # Locks the job; checked again under the lock: two reconcilers running at once (a
            # backlog of beat messages) must resend a stalled job's chunks once, not twice.
            job = (
                Job.objects.select_for_update()
                .filter(pk=job_id, status__in=ACTIVE_JOB)
                .filter(
                    Q(progressed_at__lt=stale) | Q(progressed_at__isnull=True, created_at__lt=stale)
                )
                .first()
            )
            if job is None:
                continue
            report["jobs"] += 1
            runnable = Q(status=TaskStatus.QUEUED) & (
                Q(not_before__isnull=True) | Q(not_before__lte=now)
            )
            runnable |= Q(status=TaskStatus.RUNNING, claimed_at__lt=stale)
            outstanding = sorted(
                set(
                    Task.objects.filter(runnable, job=job, chunk__lt=job.next_chunk)
                    .values_list("chunk", flat=True)
                    .distinct()
                )
            )
            if not outstanding:
                outstanding = open_window(job)
            open_left = Task.objects.filter(job=job, status__in=OPEN_TASK).exists()
            if not open_left and job.done >= job.total:
                job.status = final_status(job)
                job.finished_at = now
                report["finalized"] += 1
                snapshot = job
                transaction.on_commit(lambda snapshot=snapshot: _finalized(snapshot))  # type: ignore[misc]
            job.progressed_at = now  # resend at most once a lease
            job.save(update_fields=["next_chunk", "progressed_at", "status", "finished_at"])
            send_on_commit(str(job.pk), outstanding)
            report["chunks"] += len(outstanding)
            if outstanding:
                log.warning("job %s stalled: resent chunks %s", job.pk, outstanding[:20])
    return report
