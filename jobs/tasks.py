"""Celery tasks of the jobs app: ids in, a call into :mod:`jobs.runner`.

Per-input retries are counted in PostgreSQL (``Task.attempts``, backoff in ``not_before``) so
they survive any worker; the decorator's retries cover the chunk itself failing on
infrastructure (database or broker unreachable)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError

from jobs import runner, services


@shared_task(
    name="jobs_run_chunk",
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(DatabaseError, OSError),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=10,
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
)
def jobs_run_chunk(job_id: str, chunk: int) -> int:
    return runner.run_chunk(job_id, chunk)


@shared_task(name="jobs_reconcile", ignore_result=True, time_limit=120, soft_time_limit=100)
def jobs_reconcile() -> dict[str, Any]:
    report: dict[str, Any] = runner.reconcile()
    report["idempotency_keys_expired"] = services.idempotency_expire()
    return report
