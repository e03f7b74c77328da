"""Staff sessions read and change jobs only with the Django model permissions: a staff user
without ``view_job`` reads no jobs; results also take ``view_task``, the dead-letter queue
``view_task``, cancelling ``change_job`` and replaying ``change_task``."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from jobs.models import Job, JobStatus
from tenants.tests.factories import grant

pytestmark = pytest.mark.django_db


def refused(response: Any) -> None:
    assert response.status_code == 403, response.content
    assert response.json()["type"] == "urn:sluice:problem:permission-denied"


@pytest.fixture
def jobs(api: APIClient, other_api: APIClient, doubler: Any, run_jobs: Any) -> list[str]:
    """A finished job of each tenant (the other's with a dead task) and a queued one."""
    ids = []
    for client, inputs in ((api, [{"x": 1}]), (other_api, [{"x": "bad"}])):
        body = {"model": "doubler", "inputs": inputs}
        ids.append(run_jobs(lambda c=client, b=body: c.post("/v1/jobs", b, format="json")))
    queued = api.post("/v1/jobs", {"model": "doubler", "inputs": [{"x": 2}]}, format="json")
    return [r.json()["id"] for r in ids] + [queued.json()["id"]]


def test_a_staff_user_without_permissions_reads_no_jobs(
    staff_client: APIClient, jobs: list[str]
) -> None:
    refused(staff_client.get("/v1/jobs"))
    refused(staff_client.get(f"/v1/jobs/{jobs[1]}"))
    refused(staff_client.get(f"/v1/jobs/{jobs[1]}/results"))
    refused(staff_client.get("/v1/dead-tasks"))
    refused(staff_client.post(f"/v1/jobs/{jobs[2]}/cancel"))
    refused(staff_client.post("/v1/dead-tasks/replay", {"job": jobs[1]}, format="json"))
    assert Job.objects.get(pk=jobs[2]).status == JobStatus.QUEUED


def test_view_job_reads_every_tenants_jobs_but_not_their_tasks(
    staff_client: APIClient, staff_user: Any, jobs: list[str]
) -> None:
    grant(staff_user, "jobs.view_job")
    listed = {j["id"] for j in staff_client.get("/v1/jobs").json()["results"]}
    assert listed == set(jobs)
    assert staff_client.get(f"/v1/jobs/{jobs[1]}").json()["failed"] == 1
    refused(staff_client.get(f"/v1/jobs/{jobs[1]}/results"))
    refused(staff_client.get("/v1/dead-tasks"))
    refused(staff_client.post(f"/v1/jobs/{jobs[2]}/cancel"))


def test_tasks_and_writes_take_their_own_permissions(
    staff_client: APIClient, staff_user: Any, jobs: list[str]
) -> None:
    user = grant(staff_user, "jobs.view_job", "jobs.view_task")
    assert len(staff_client.get(f"/v1/jobs/{jobs[1]}/results").json()["results"]) == 1
    assert len(staff_client.get("/v1/dead-tasks").json()["results"]) == 1
    refused(staff_client.post("/v1/dead-tasks/replay", {"job": jobs[1]}, format="json"))
    user = grant(user, "jobs.change_job", "jobs.change_task")
    assert staff_client.post(f"/v1/jobs/{jobs[2]}/cancel").json()["status"] == "cancelled"
    replayed = staff_client.post("/v1/dead-tasks/replay", {"job": jobs[1]}, format="json")
    assert replayed.json()["replayed"] == 1


def test_staff_submit_no_jobs(staff_client: APIClient, staff_user: Any, doubler: Any) -> None:
    grant(staff_user, "jobs.view_job", "jobs.add_job")
    body = {"model": "doubler", "inputs": [{"x": 1}]}
    refused(staff_client.post("/v1/jobs", body, format="json"))
