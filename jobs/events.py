"""A job's progress on the stream log (``job-<id>``): ``progress`` events as chunks finish and
one ``end`` when the job is terminal. Best effort: the database holds the truth, so a stream
that is gone (expired, Redis restarted) is created again, and an unreachable log is logged,
never a failed chunk."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from jobs.models import Job
from streaming.eventlog import StreamNotFound, get_log

log = logging.getLogger(__name__)
KIND = "data"


def stream_open(job: Job) -> None:
    try:
        get_log().create(job.stream_id, tenant_id=job.tenant_id, kind=KIND)
    except (RedisError, OSError):
        log.exception("job %s: could not create its event stream", job.pk)


def _payload(job: Job) -> dict[str, Any]:
    return {"job": str(job.pk), **job.counts()}


def _append(job: Job, event: str, data: dict[str, Any]) -> None:
    journal = get_log()
    try:
        try:
            journal.append(job.stream_id, event, data)
        except StreamNotFound:
            journal.create(job.stream_id, tenant_id=job.tenant_id, kind=KIND)
            journal.append(job.stream_id, event, data)
    except (RedisError, OSError):
        log.exception("job %s: could not publish %s", job.pk, event)


def publish_progress(job: Job) -> None:
    _append(job, "progress", _payload(job))


def publish_end(job: Job) -> None:
    _append(job, "end", _payload(job))
