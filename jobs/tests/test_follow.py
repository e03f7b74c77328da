"""Following a job's results as its tasks finish: the commit-order cursor."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from jobs import runner, selectors, services
from jobs.inputs import from_list
from jobs.models import Job, Task
from jobs.selectors import Cursor
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

NDJSON = "application/x-ndjson"


def _job(tenant: Tenant, version: Any, n: int, *, chunk_size: int = 2, attempts: int = 3) -> Job:
    """A job whose chunks nobody runs: the test runs them, in the order it wants."""
    request = services.JobRequest(
        model=version.model,
        version=version,
        inputs=from_list([{"x": i} for i in range(n)]),
        priority=0,
        chunk_size=chunk_size,
        max_attempts=attempts,
        options={},
    )
    return services.job_create(tenant=tenant, request=request)


def _run(job: Job, chunk: int) -> None:
    runner.run_chunk(str(job.pk), chunk)


def _read_all(
    job: Job, after: Cursor | None = None, *, limit: int = 500
) -> tuple[list[tuple[Cursor, tuple[Any, ...]]], Cursor]:
    after = after or Cursor()
    out: list[tuple[Cursor, tuple[Any, ...]]] = []
    while page := selectors.results_after(job.pk, after, limit=limit):
        out += page
        after = page[-1][0]
    return out, after


def _indices(rows: list[tuple[Cursor, tuple[Any, ...]]]) -> list[int]:
    return [row[1] for _, row in rows]


def _lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


# --- the cursor -------------------------------------------------------------------------------


def test_it_reads_finished_tasks_in_commit_order(tenant: Tenant, doubler: Any) -> None:
    job = _job(tenant, doubler, 6)
    for chunk in (2, 0, 1):
        _run(job, chunk)
    rows, _ = _read_all(job, limit=1)
    assert _indices(rows) == [4, 5, 0, 1, 2, 3]
    assert [cursor.seq for cursor, _ in rows] == [1, 1, 2, 2, 3, 3]
    job.refresh_from_db()
    assert job.finish_seq == 3


def test_a_commit_stamped_before_what_was_read_is_not_missed(
    tenant: Tenant, doubler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose clock is behind, or whose commit waited for the job's lock, stamps
    finished_at before rows that committed ahead of it: a cursor on finished_at would skip
    its rows. finish_seq is handed out under the lock, in commit order."""
    job = _job(tenant, doubler, 4)
    now = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: now + timedelta(seconds=5))
    _run(job, 1)
    seen, cursor = _read_all(job)
    monkeypatch.setattr(timezone, "now", lambda: now)
    _run(job, 0)
    later, _ = _read_all(job, cursor)
    assert (_indices(seen), _indices(later)) == ([2, 3], [0, 1])
    stamps = dict(Task.objects.filter(job=job).values_list("index", "finished_at"))
    assert stamps[0] < stamps[2]  # what a timestamp cursor would have got wrong


def test_reads_between_commits_see_every_task_exactly_once(tenant: Tenant, doubler: Any) -> None:
    job = _job(tenant, doubler, 20, chunk_size=3)
    seen: list[tuple[Cursor, tuple[Any, ...]]] = []
    cursor = Cursor()
    for chunk in (3, 0, 6, 1, 5, 2, 4):
        _run(job, chunk)
        page = selectors.results_after(job.pk, cursor, limit=2)  # less than was committed
        seen += page
        cursor = page[-1][0] if page else cursor
    rest, _ = _read_all(job, cursor)
    ids = [c.task for c, _ in seen + rest]
    assert len(ids) == len(set(ids)) == 20
    assert set(ids) == set(Task.objects.filter(job=job).values_list("id", flat=True))


def test_dead_cancelled_and_replayed_tasks_get_lines(
    tenant: Tenant, broken: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "send_on_commit", lambda *a, **kw: None)
    job = _job(tenant, broken, 4, attempts=1)
    _run(job, 0)
    dead, cursor = _read_all(job)
    assert [selectors.result_line(row) for _, row in dead] == [
        {
            "task": row[0],
            "index": i,
            "status": "dead",
            "error": "RuntimeError: model exploded",
            "attempts": 1,
        }
        for i, (_, row) in enumerate(dead)
    ]
    # Replayed, the task leaves the finished ones; finishing again, it has a later line.
    replayed = dead[0][0].task
    assert services.dead_replay(job=job, task_ids=[replayed]) == 1
    assert _read_all(job, Cursor())[0] == dead[1:]
    _run(job, 0)
    again, cursor = _read_all(job, cursor)
    assert [c.task for c, _ in again] == [replayed]
    services.job_cancel(job=job)
    cancelled, _ = _read_all(job, cursor)
    assert [selectors.result_line(row) for _, row in cancelled] == [
        {"task": row[0], "index": i, "status": "cancelled"}
        for i, (_, row) in zip((2, 3), cancelled, strict=True)
    ]


def test_a_cursor_token_round_trips_and_nothing_else_parses() -> None:
    assert Cursor.parse(Cursor(3, 17).token) == Cursor(3, 17)
    assert Cursor.parse("0-0") == Cursor()
    for bad in ("", "3", "3-", "-3", "a-1", "1-b", "1-2-3", " 1-2", "1" * 40 + "-1"):
        with pytest.raises(ValueError, match="not a results cursor"):
            Cursor.parse(bad)


@pytest.mark.django_db(transaction=True)
def test_concurrent_commits_are_read_exactly_once(
    tenant: Tenant, doubler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers committing chunks at once while a reader pages through: PostgreSQL's row lock
    on the job orders the commits, so every task is read once."""
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL (SQLite runs one writer at a time)")
    monkeypatch.setattr(runner, "_send", lambda *a, **kw: None)
    job = _job(tenant, doubler, 200, chunk_size=5)
    chunks = list(range(job.chunks))
    lock = threading.Lock()

    def work() -> None:
        try:
            while True:
                with lock:
                    if not chunks:
                        return
                    chunk = chunks.pop()
                _run(job, chunk)
        finally:
            connection.close()

    workers = [threading.Thread(target=work) for _ in range(4)]
    for thread in workers:
        thread.start()
    seen: list[int] = []
    cursor = Cursor()
    while True:
        writing = any(t.is_alive() for t in workers)
        page = selectors.results_after(job.pk, cursor, limit=7)
        seen += [c.task for c, _ in page]
        cursor = page[-1][0] if page else cursor
        if not (page or writing):
            break
    for thread in workers:
        thread.join()
    assert len(seen) == len(set(seen)) == 200
