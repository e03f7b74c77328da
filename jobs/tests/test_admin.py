from __future__ import annotations

from typing import Any

import pytest

from jobs import services
from jobs.inputs import from_list
from jobs.models import Job, Task, TaskStatus
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


def _job(tenant: Tenant, version: Any, n: int, run_jobs: Any, **kw: Any) -> Job:
    request = services.JobRequest(
        model=version.model,
        version=version,
        inputs=from_list([{"x": i} for i in range(n)]),
        priority=0,
        chunk_size=kw.get("chunk_size", 10),
        max_attempts=kw.get("max_attempts", 1),
        options={},
    )
    return run_jobs(lambda: services.job_create(tenant=tenant, request=request))


def test_the_job_list_shows_progress_bars_and_filters(
    admin_client: Any, tenant: Tenant, doubler: Any, broken: Any, run_jobs: Any
) -> None:
    _job(tenant, doubler, 4, run_jobs)
    _job(tenant, broken, 2, run_jobs)
    page = admin_client.get("/admin/jobs/job/")
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="jobs-bar"') == 2
    assert "jobs-bar-ok" in html and "jobs-bar-dead" in html
    assert ".jobs-bar-ok {" in html  # the template override's style
    failed = admin_client.get("/admin/jobs/job/?status__exact=failed").content.decode()
    assert failed.count('class="jobs-bar"') == 1
    for query in (f"tenant__id__exact={tenant.pk}", f"model__id__exact={doubler.model_id}"):
        assert admin_client.get(f"/admin/jobs/job/?{query}").status_code == 200


def test_a_job_page_drills_down_to_its_tasks(
    admin_client: Any, tenant: Tenant, broken: Any, run_jobs: Any
) -> None:
    job = _job(tenant, broken, 60, run_jobs)
    page = admin_client.get(f"/admin/jobs/job/{job.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "engine error: the model failed on this input" in html
    assert f"/admin/jobs/task/?job={job.pk}" in html
    tasks = admin_client.get(f"/admin/jobs/task/?job={job.pk}")
    assert tasks.status_code == 200


def test_dead_tasks_are_replayed_from_the_admin(
    admin_client: Any, tenant: Tenant, broken: Any, run_jobs: Any
) -> None:
    job = _job(tenant, broken, 3, run_jobs)
    dead = list(Task.objects.filter(job=job).values_list("pk", flat=True))
    assert admin_client.get("/admin/jobs/deadtask/").status_code == 200
    response = run_jobs(
        lambda: admin_client.post(
            "/admin/jobs/deadtask/",
            {"action": "replay", "_selected_action": dead[:2]},
            follow=True,
        )
    )
    assert "2 tasks replayed" in response.content.decode()
    # The model still fails: the two replayed ones ran again (a fresh attempt) and are dead.
    finished = dict(Task.objects.filter(job=job).values_list("pk", "finished_at"))
    assert finished[dead[0]] > finished[dead[2]] and finished[dead[1]] > finished[dead[2]]
    assert set(Task.objects.filter(job=job).values_list("status", flat=True)) == {TaskStatus.DEAD}
    job.refresh_from_db()
    assert (job.status, job.failed) == ("failed", 3)


def test_jobs_are_cancelled_from_the_admin(admin_client: Any, tenant: Tenant, doubler: Any) -> None:
    request = services.JobRequest(
        model=doubler.model,
        version=doubler,
        inputs=from_list([{"x": 1}]),
        priority=0,
        chunk_size=10,
        max_attempts=1,
        options={},
    )
    job = services.job_create(tenant=tenant, request=request)
    admin_client.post("/admin/jobs/job/", {"action": "cancel", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert job.status == "cancelled"
