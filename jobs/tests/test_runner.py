"""The worker half: exactly-once results, retries to dead, replay, fan-in, reconciliation."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from inference.models import ModelVersion
from jobs import runner, services
from jobs.inputs import from_list
from jobs.models import Job, JobStatus, Task, TaskStatus
from streaming.eventlog import get_log
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


def _request(version: ModelVersion, items: list[dict[str, Any]], **kw: Any) -> Any:
    return services.JobRequest(
        model=version.model,
        version=version,
        inputs=from_list(items),
        priority=0,
        chunk_size=kw.get("chunk_size", 3),
        max_attempts=kw.get("max_attempts", 3),
        options={},
    )


def _create(tenant: Tenant, version: ModelVersion, n: int, **kw: Any) -> Job:
    return services.job_create(
        tenant=tenant, request=_request(version, [{"x": i} for i in range(n)], **kw)
    )


def test_a_redelivered_chunk_writes_no_second_result(tenant: Tenant, doubler: Any) -> None:
    job = _create(tenant, doubler, 6)  # no on_commit callbacks run: nothing is queued
    assert runner.run_chunk(str(job.pk), 0) == 3
    assert runner.run_chunk(str(job.pk), 0) == 0  # the same message again
    job.refresh_from_db()
    assert (job.succeeded, job.status) == (3, JobStatus.RUNNING)
    assert list(Task.objects.filter(chunk=0).values_list("attempts", flat=True)) == [1, 1, 1]


def test_a_stale_run_loses_to_the_first_commit(tenant: Tenant, doubler: Any) -> None:
    """Two workers ran the same chunk (a lease expired under a slow one): only one commit
    counts, the other changes nothing."""
    job = _create(tenant, doubler, 3)
    claimed = runner._claim(str(job.pk), 0, timezone.now())
    outcome = runner._predict(Job.objects.select_related("version").get(pk=job.pk), claimed)
    attempts = {task_id: a for task_id, _i, _r, a in claimed}
    assert runner.commit(str(job.pk), 0, outcome, attempts) == 3
    assert runner.commit(str(job.pk), 0, outcome, attempts) == 0
    job.refresh_from_db()
    assert (job.succeeded, job.status) == (3, JobStatus.SUCCEEDED)


def test_the_job_is_finalized_once_with_its_end_event(
    tenant: Tenant, doubler: Any, run_jobs: Any
) -> None:
    job = run_jobs(lambda: _create(tenant, doubler, 10))
    job.refresh_from_db()
    assert (job.status, job.succeeded, job.next_chunk, job.chunks) == ("succeeded", 10, 4, 4)
    assert job.finished_at is not None and job.model_seconds > 0
    events = get_log().read(job.stream_id)
    kinds = [e.event for e in events]
    assert kinds.count("end") == 1 and kinds[-1] == "end"
    assert kinds.count("progress") == 4
    assert events[-1].data == {
        "job": str(job.pk),
        "status": "succeeded",
        "total": 10,
        "done": 10,
        "succeeded": 10,
        "failed": 0,
        "cancelled": 0,
    }


def test_an_always_failing_task_is_dead_after_exactly_max_attempts(
    tenant: Tenant, broken: Any, run_jobs: Any, caplog: Any
) -> None:
    from jobs.runner import ENGINE_ERROR

    with caplog.at_level("ERROR", logger="jobs.runner"):
        job = run_jobs(lambda: _create(tenant, broken, 2, max_attempts=4))
    job.refresh_from_db()
    assert (job.status, job.failed, job.succeeded) == ("failed", 2, 0)
    for task in Task.objects.filter(job=job):
        assert (task.status, task.attempts) == (TaskStatus.DEAD, 4)
        # What the tenant reads is fixed text; the engine's own is in the worker's log.
        assert task.last_error == ENGINE_ERROR
        assert f"job {job.pk} task {task.pk}: the engine failed" in caplog.text
    assert "RuntimeError: model exploded" in caplog.text


def test_replay_gives_dead_tasks_new_attempts(
    tenant: Tenant, api: APIClient, run_jobs: Any, settings: Any
) -> None:
    from inference.tests.conftest import make_version
    from inference.tests.fakes import DOUBLER

    flaky = make_version("flaky", options={"handler": "inference.tests.fakes.Broken"})
    job = run_jobs(lambda: _create(tenant, flaky, 3, max_attempts=2))
    job.refresh_from_db()
    assert job.status == "failed"
    dead = api.get(f"/v1/dead-tasks?job={job.pk}").json()
    assert dead["count"] == 3
    # The model is fixed (same version row, a working handler) and one task is replayed.
    ModelVersion.objects.filter(pk=flaky.pk).update(runtime_options=DOUBLER, checksum="fixed")
    first = dead["results"][0]["task"]
    replayed = run_jobs(
        lambda: api.post(
            "/v1/dead-tasks/replay", {"job": str(job.pk), "tasks": [first]}, format="json"
        )
    )
    assert replayed.json()["replayed"] == 1
    job.refresh_from_db()
    assert (job.status, job.succeeded, job.failed) == ("partial", 1, 2)
    run_jobs(lambda: services.dead_replay(job=job))
    job.refresh_from_db()
    assert (job.status, job.succeeded, job.failed) == ("succeeded", 3, 0)
    assert api.get("/v1/dead-tasks").json()["count"] == 0
    assert get_log().meta(job.stream_id) is not None


def test_retries_recover_a_transient_failure(
    tenant: Tenant, run_jobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference.tests.conftest import make_version
    from inference.tests.fakes import Doubler

    version = make_version("twice")
    calls = {"n": 0}
    real = Doubler.predict

    def flaky(self: Any, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls["n"] += 1
        if calls["n"] <= 2:  # the batch call and the one-by-one call of the first attempt
            raise ConnectionError("upstream blip")
        return real(self, batch)

    monkeypatch.setattr(Doubler, "predict", flaky)
    job = run_jobs(lambda: _create(tenant, version, 1, max_attempts=3))
    job.refresh_from_db()
    task = job.tasks.get()
    assert (job.status, task.attempts, task.result) == ("succeeded", 2, {"y": 0})
    assert task.last_error == ""


def test_backoff_is_exponential_with_jitter_and_capped(settings: Any) -> None:
    settings.JOBS_RETRY_BACKOFF_SECONDS = 2
    settings.JOBS_RETRY_BACKOFF_MAX_SECONDS = 10
    fresh = runner.backoff_seconds
    draws = [fresh(3) for _ in range(200)]
    assert all(0.1 <= d <= 8 for d in draws) and len({round(d, 3) for d in draws}) > 50
    assert max(fresh(10) for _ in range(200)) <= 10


def test_the_reconciler_resends_a_stalled_jobs_chunks(
    tenant: Tenant, doubler: Any, run_jobs: Any, settings: Any
) -> None:
    settings.JOBS_LEASE_SECONDS = 60
    job = _create(tenant, doubler, 9)  # its messages were "lost": nothing ran
    assert runner.reconcile()["jobs"] == 0  # not stalled yet
    # A worker claimed chunk 0 and died.
    runner._claim(str(job.pk), 0, timezone.now() - timedelta(seconds=120))
    later = timezone.now() + timedelta(seconds=61)
    report = run_jobs(lambda: runner.reconcile(now=later))
    assert report == {"jobs": 1, "chunks": 3, "finalized": 0}
    job.refresh_from_db()
    assert (job.status, job.succeeded) == ("succeeded", 9)
    assert sorted(set(job.tasks.values_list("attempts", flat=True))) == [1, 2]


def test_cancel_mid_run_leaves_the_job_cancelled(
    tenant: Tenant, doubler: Any, run_jobs: Any
) -> None:
    job = _create(tenant, doubler, 9)
    runner.run_chunk(str(job.pk), 0)
    services.job_cancel(job=job)
    assert runner.run_chunk(str(job.pk), 1) == 0
    job.refresh_from_db()
    assert (job.status, job.succeeded, job.cancelled) == ("cancelled", 3, 6)


def test_large_results_go_to_object_storage(
    tenant: Tenant, doubler: Any, run_jobs: Any, settings: Any, api: APIClient
) -> None:
    settings.JOBS_RESULT_INLINE_MAX_BYTES = 4
    job = run_jobs(lambda: _create(tenant, doubler, 2))
    task = Task.objects.get(job=job, index=1)
    assert task.result is None and task.result_ref.endswith("/results/1.json")
    from django.core.files.storage import default_storage

    with default_storage.open(task.result_ref) as fh:
        assert json.loads(fh.read()) == {"y": 2}
    lines = b"".join(
        api.get(f"/v1/jobs/{job.pk}/results?format=ndjson").streaming_content
    ).splitlines()
    assert json.loads(lines[1])["result"] == {"y": 2}


def test_digits_jobs_run_through_the_onnx_runtime(
    tenant: Tenant, digits: Any, run_jobs: Any, api: APIClient, digits_pixels: Any
) -> None:
    from sklearn.datasets import load_digits

    labels = load_digits().target[:200]
    body = {
        "model": "digits",
        "inputs": [{"pixels": p} for p in digits_pixels],
        "options": {"chunk_size": 64},
    }
    job_id = run_jobs(lambda: api.post("/v1/jobs", body, format="json")).json()["id"]
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.succeeded) == ("succeeded", 200)
    predicted = [r["label"] for r in job.tasks.order_by("index").values_list("result", flat=True)]
    accuracy = sum(int(p == t) for p, t in zip(predicted, labels, strict=True)) / 200
    assert accuracy > 0.9


def test_priority_widens_the_dispatch_window(tenant: Tenant, doubler: Any, settings: Any) -> None:
    settings.JOBS_WINDOW = 2
    plain = _create(tenant, doubler, 30, chunk_size=1)
    request = _request(doubler, [{"x": i} for i in range(30)], chunk_size=1)
    urgent = services.job_create(
        tenant=tenant, request=services.JobRequest(**{**request.__dict__, "priority": 5})
    )
    assert (plain.next_chunk, urgent.next_chunk) == (2, 7)


def test_a_task_whose_runs_never_finish_is_dead_after_max_attempts(
    tenant: Tenant, doubler: Any
) -> None:
    """A worker killed on an input every time: the claim counts, and past max_attempts the
    task is dead instead of being handed to yet another worker."""
    job = _create(tenant, doubler, 1, max_attempts=2)
    for hours in (2, 1):  # claimed, then the worker "died"; twice
        assert runner._claim(str(job.pk), 0, timezone.now() - timedelta(hours=hours))
    assert runner.run_chunk(str(job.pk), 0) == 0
    task = job.tasks.get()
    assert (task.status, task.attempts) == (TaskStatus.DEAD, 3)
    assert task.last_error.startswith("gave up: 2 attempts did not finish")
    job.refresh_from_db()
    assert (job.status, job.failed) == ("failed", 1)


def test_a_model_that_cannot_load_is_retried_then_dead(tenant: Tenant, run_jobs: Any) -> None:
    from inference.tests.conftest import make_version

    missing = make_version("ghost", options={"handler": "inference.tests.fakes.Nope"})
    job = run_jobs(lambda: _create(tenant, missing, 2, max_attempts=2))
    job.refresh_from_db()
    assert (job.status, job.failed) == ("failed", 2)
    assert set(job.tasks.values_list("attempts", flat=True)) == {2}
    from jobs.runner import MODEL_UNAVAILABLE

    assert job.tasks.first().last_error == MODEL_UNAVAILABLE
