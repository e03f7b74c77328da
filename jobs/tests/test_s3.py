"""Inputs from and large results to S3 through django-storages, against moto's standalone
S3-compatible server started on a free port (a real HTTP endpoint, not an in-process mock)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from rest_framework.test import APIClient

from jobs.models import Task
from tenants.models import Tenant
from testing.processes import BIN, free_port

pytestmark = pytest.mark.django_db
BUCKET = "sluice-jobs"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto_server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3(s3_endpoint: str, settings: Any) -> Any:
    import boto3

    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **credentials)
    client.create_bucket(Bucket=BUCKET)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": s3_endpoint,
                "region_name": "us-east-1",
                "access_key": "test",
                "secret_key": "test",
                "file_overwrite": True,
            },
        },
    }
    return client


def test_a_job_reads_s3_inputs_and_writes_large_results_to_s3(
    s3: Any, api: APIClient, tenant: Tenant, doubler: Any, run_jobs: Any, settings: Any
) -> None:
    from django.core.files.storage import default_storage
    from storages.backends.s3 import S3Storage

    assert isinstance(default_storage, S3Storage)
    lines = "\n".join(json.dumps({"x": i}) for i in range(5)).encode()
    s3.put_object(Bucket=BUCKET, Key=f"inputs/{tenant.slug}/batch.jsonl", Body=lines)
    settings.JOBS_RESULT_INLINE_MAX_BYTES = 16  # every result inline
    body = {"model": "doubler", "input_uri": f"s3://{BUCKET}/inputs/{tenant.slug}/batch.jsonl"}
    response = run_jobs(lambda: api.post("/v1/jobs", body, format="json"))
    assert response.status_code == 201, response.json()
    job_id = response.json()["id"]
    settings.JOBS_RESULT_INLINE_MAX_BYTES = 4
    rerun = run_jobs(
        lambda: api.post("/v1/jobs", {**body, "options": {"chunk_size": 2}}, format="json")
    )
    big = Task.objects.filter(job_id=rerun.json()["id"]).order_by("index")
    assert all(t.result is None and t.result_ref for t in big)
    stored = s3.get_object(Bucket=BUCKET, Key=big[3].result_ref)["Body"].read()
    assert json.loads(stored) == {"y": 6}
    ndjson = api.get(f"/v1/jobs/{rerun.json()['id']}/results?format=ndjson")
    results = [json.loads(x)["result"] for x in b"".join(ndjson.streaming_content).splitlines()]
    assert results == [{"y": 2 * i} for i in range(5)]
    assert all(t.result_ref == "" for t in Task.objects.filter(job_id=job_id))


def test_other_buckets_and_missing_objects_are_422(
    s3: Any, api: APIClient, tenant: Tenant, doubler: Any
) -> None:
    for uri in (
        f"s3://elsewhere/inputs/{tenant.slug}/x.jsonl",
        f"s3://{BUCKET}/inputs/{tenant.slug}/missing.jsonl",
        f"s3://{BUCKET}/inputs/globex/x.jsonl",
    ):
        response = api.post("/v1/jobs", {"model": "doubler", "input_uri": uri}, format="json")
        assert response.status_code == 422, uri
        assert response.json()["errors"][0]["field"] == "input_uri"
