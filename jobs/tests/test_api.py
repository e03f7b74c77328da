from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.files.base import ContentFile
from rest_framework.test import APIClient

from jobs.models import IdempotencyKey, Job, Task, TaskStatus
from tenants.models import Tenant
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db


def _submit(api: APIClient, run_jobs: Any, body: dict[str, Any], **headers: str) -> Any:
    return run_jobs(lambda: api.post("/v1/jobs", body, format="json", **headers))


def test_it_runs_a_json_list_job_to_success(api: APIClient, doubler: Any, run_jobs: Any) -> None:
    body = {
        "model": "doubler",
        "inputs": [{"x": i} for i in range(25)],
        "options": {"chunk_size": 4},
    }
    response = _submit(api, run_jobs, body)
    assert response.status_code == 201, response.json()
    job_id = response.json()["id"]
    assert response["Location"] == f"/v1/jobs/{job_id}"
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert (job["total"], job["succeeded"], job["done"], job["progress"]) == (25, 25, 25, 1.0)
    results = api.get(f"/v1/jobs/{job_id}/results?limit=10").json()
    assert [r["result"] for r in results["results"]] == [{"y": 2 * i} for i in range(10)]
    assert results["next"]
    following = api.get(results["next"]).json()
    assert [r["index"] for r in following["results"]] == list(range(10, 20))


def test_it_streams_results_as_ndjson(api: APIClient, doubler: Any, run_jobs: Any) -> None:
    response = _submit(api, run_jobs, {"model": "doubler", "inputs": [{"x": i} for i in range(7)]})
    job_id = response.json()["id"]
    streamed = api.get(f"/v1/jobs/{job_id}/results", HTTP_ACCEPT="application/x-ndjson")
    assert streamed["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in b"".join(streamed.streaming_content).splitlines()]
    assert [(x["index"], x["result"]) for x in lines] == [(i, {"y": 2 * i}) for i in range(7)]
    by_query = api.get(f"/v1/jobs/{job_id}/results?format=ndjson")
    assert len(b"".join(by_query.streaming_content).splitlines()) == 7


def test_it_accepts_jsonl_and_csv_uploads(api: APIClient, doubler: Any, run_jobs: Any) -> None:
    jsonl = io.BytesIO(b'{"x": 1}\n\n{"x": 2}\n')
    jsonl.name = "in.jsonl"
    first = run_jobs(lambda: api.post("/v1/jobs", {"model": "doubler", "file": jsonl}))
    assert first.status_code == 201, first.json()
    assert first.json()["total"] == 2
    csv = io.BytesIO(b"x\n3\n4\n5\n")
    csv.name = "in.csv"
    second = run_jobs(
        lambda: api.post(
            "/v1/jobs", {"model": "doubler", "file": csv, "options": '{"chunk_size": 2}'}
        )
    )
    assert second.status_code == 201, second.json()
    job = Job.objects.get(pk=second.json()["id"])
    assert (job.status, job.chunks) == ("succeeded", 2)
    assert list(job.tasks.order_by("index").values_list("result", flat=True)) == [
        {"y": 6},
        {"y": 8},
        {"y": 10},
    ]


def test_it_reads_inputs_from_storage_under_the_tenants_prefix(
    api: APIClient, doubler: Any, run_jobs: Any, tenant: Tenant
) -> None:
    from django.core.files.storage import default_storage  # not at import: pytest would load it

    name = default_storage.save(f"inputs/{tenant.slug}/batch.jsonl", ContentFile(b'{"x": 9}\n'))
    ok = _submit(api, run_jobs, {"model": "doubler", "input_uri": f"storage://{name}"})
    assert ok.status_code == 201, ok.json()
    assert Task.objects.get(job_id=ok.json()["id"]).result == {"y": 18}
    other = default_storage.save("inputs/globex/batch.jsonl", ContentFile(b'{"x": 1}\n'))
    refused = api.post("/v1/jobs", {"model": "doubler", "input_uri": f"storage://{other}"})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "input_uri"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "doubler"}, ""),
        ({"model": "doubler", "inputs": []}, "inputs"),
        ({"model": "doubler", "inputs": [{"x": 1}, 5]}, "inputs[1]"),
        (
            {"model": "doubler", "inputs": [{"x": 1}], "options": {"chunk_size": 0}},
            "options.chunk_size",
        ),
    ],
)
def test_it_rejects_bad_submissions_with_the_field(
    api: APIClient, doubler: Any, body: dict[str, Any], field: str
) -> None:
    response = api.post("/v1/jobs", body, format="json")
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == field
    assert not Job.objects.exists()


def test_an_unknown_model_is_a_404(api: APIClient, db: None) -> None:
    response = api.post("/v1/jobs", {"model": "nope", "inputs": [{"x": 1}]}, format="json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"


def test_an_invalid_input_is_a_dead_task_not_a_failed_job(
    api: APIClient, doubler: Any, run_jobs: Any
) -> None:
    body = {"model": "doubler", "inputs": [{"x": 1}, {"x": "seven"}, {"x": 3}]}
    job_id = _submit(api, run_jobs, body).json()["id"]
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["succeeded"], job["failed"]) == ("partial", 2, 1)
    dead = api.get("/v1/dead-tasks").json()["results"]
    assert [(d["index"], d["attempts"]) for d in dead] == [(1, 1)]
    assert dead[0]["error"].startswith("invalid input")


def test_the_idempotency_key_replays_the_first_answer(
    api: APIClient, doubler: Any, run_jobs: Any
) -> None:
    body = {"model": "doubler", "inputs": [{"x": 1}]}
    first = _submit(api, run_jobs, body, HTTP_IDEMPOTENCY_KEY='"order-1"')
    again = _submit(api, run_jobs, body, HTTP_IDEMPOTENCY_KEY='"order-1"')
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Job.objects.count() == 1
    other = api.post(
        "/v1/jobs", {**body, "inputs": [{"x": 2}]}, format="json", HTTP_IDEMPOTENCY_KEY="order-1"
    )
    assert other.status_code == 422
    assert other.json()["type"] == "urn:sluice:problem:idempotency-key-reused"
    assert Job.objects.count() == 1


def test_keys_are_per_tenant_and_kept_a_day(
    api: APIClient, other_api: APIClient, doubler: Any, run_jobs: Any
) -> None:
    body = {"model": "doubler", "inputs": [{"x": 1}]}
    _submit(api, run_jobs, body, HTTP_IDEMPOTENCY_KEY="same")
    _submit(other_api, run_jobs, body, HTTP_IDEMPOTENCY_KEY="same")
    assert Job.objects.count() == 2
    row = IdempotencyKey.objects.first()
    assert row is not None
    assert (row.expires_at - row.created_at).total_seconds() >= 24 * 3600


def test_a_failed_submission_frees_its_key(api: APIClient, doubler: Any, run_jobs: Any) -> None:
    bad = api.post(
        "/v1/jobs", {"model": "doubler", "inputs": []}, format="json", HTTP_IDEMPOTENCY_KEY="k2"
    )
    assert bad.status_code == 422
    good = _submit(
        api, run_jobs, {"model": "doubler", "inputs": [{"x": 1}]}, HTTP_IDEMPOTENCY_KEY="k2"
    )
    assert good.status_code == 201


def test_cancel_stops_queued_tasks(api: APIClient, doubler: Any) -> None:
    job_id = api.post(
        "/v1/jobs", {"model": "doubler", "inputs": [{"x": i} for i in range(5)]}, format="json"
    ).json()["id"]
    response = api.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["cancelled"]) == ("cancelled", 5)
    assert set(Task.objects.values_list("status", flat=True)) == {TaskStatus.CANCELLED}
    again = api.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["type"] == "urn:sluice:problem:job-conflict"


def test_jobs_are_tenant_scoped(
    api: APIClient, doubler: Any, assert_cross_tenant_404: Any, other_api: APIClient
) -> None:
    job_id = api.post("/v1/jobs", {"model": "doubler", "inputs": [{"x": 1}]}, format="json").json()[
        "id"
    ]
    for method, url in [
        ("get", f"/v1/jobs/{job_id}"),
        ("get", f"/v1/jobs/{job_id}/results"),
        ("post", f"/v1/jobs/{job_id}/cancel"),
    ]:
        assert_cross_tenant_404(method, url)
    assert other_api.get("/v1/jobs").json()["count"] == 0
    assert (
        other_api.post("/v1/dead-tasks/replay", {"job": job_id}, format="json").status_code == 404
    )
    assert api.get("/v1/jobs").json()["count"] == 1


def test_it_needs_the_jobs_scope(tenant: Tenant, client_for: Any, doubler: Any) -> None:
    client = client_for(make_key(tenant, scopes=["infer"])[1])
    response = client.get("/v1/jobs")
    assert response.status_code == 403
    assert response["Content-Type"] == "application/problem+json"


def test_a_job_submitted_while_no_worker_runs_is_queued_and_says_why_it_waits(
    api: APIClient, doubler: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from plumbing import presence

    body = {"model": "doubler", "inputs": [{"x": 1}]}
    with django_capture_on_commit_callbacks(execute=False):  # not sent: nothing would run it
        response = api.post("/v1/jobs", body, format="json")
    assert response.status_code == 201, response.json()  # accepted: jobs wait for a worker
    job = response.json()
    assert job["status"] == "queued"
    assert job["notice"] == (
        f"No worker is serving queue {settings.JOBS_QUEUE}: the job waits queued and runs when "
        "a worker starts."
    )
    presence.announce("jobs-test", [settings.JOBS_QUEUE])
    try:
        presence.forget()
        assert api.get(f"/v1/jobs/{job['id']}").json()["notice"] is None
    finally:
        presence.withdraw("jobs-test", [settings.JOBS_QUEUE])
