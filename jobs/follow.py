"""Following a job from a terminal: a live progress bar (rich) fed by the job's event
stream, with the database as the fallback when the stream is out of reach."""

from __future__ import annotations

import time
from typing import Any

from celery import current_app as app
from django.conf import settings
from redis.exceptions import RedisError

from jobs.models import Job
from plumbing.embedded import start_worker
from streaming.eventlog import END, StreamNotFound, get_log

_worker: Any = None


def ensure_worker() -> None:
    """The embedded default has no separate worker: its broker lives in this process, so the
    job is run by an in-process worker here (as ``manage.py serve`` does)."""
    global _worker
    if not settings.EMBEDDED or app.conf.task_always_eager or _worker is not None:
        return
    _worker = start_worker(queues=[settings.JOBS_QUEUE], concurrency=2)


def _poll(job: Job, update: Any) -> Job:
    while True:
        job.refresh_from_db()
        update(job.done, job.total, job.status)
        if not job.is_active:
            return job
        time.sleep(0.5)


def follow(job: Job, *, out: Any) -> Job:
    """Block until the job is terminal, drawing its progress; returns the final row."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=out, force_terminal=getattr(out, "isatty", lambda: False)())
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"job {job.short_id}", total=job.total)

        def update(done: int, total: int, status: str) -> None:
            bar.update(
                task, completed=done, total=total, description=f"job {job.short_id} {status}"
            )

        journal = get_log()
        after: str | None = None
        try:
            while True:
                for event in journal.read(job.stream_id, after, block_ms=1000, count=500):
                    after = event.id if event.event != "gap" else after
                    if "done" in event.data:
                        update(event.data["done"], event.data["total"], event.data["status"])
                    if event.event == END:
                        job.refresh_from_db()
                        return job
                job.refresh_from_db()  # the stream may have ended before we subscribed
                if not job.is_active:
                    update(job.done, job.total, job.status)
                    return job
        except (StreamNotFound, RedisError, OSError):
            return _poll(job, update)
