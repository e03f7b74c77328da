"""``GET /v1/jobs/{id}/events``: the job's progress through the streaming app's SSE code."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from jobs import services
from jobs.inputs import from_list
from jobs.models import Job
from streaming.services import stream_slots_held
from tenants.models import Tenant
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db(transaction=True)


def _frames(body: str) -> list[dict[str, str]]:
    frames = []
    for block in body.split("\n\n"):
        fields = dict(re.findall(r"^(id|event|data): (.*)$", block, re.M))
        if fields:
            frames.append(fields)
    return frames


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    async def run() -> tuple[int, dict[str, str], str]:
        named = {k.replace("_", "-"): v for k, v in headers.items()}
        response = await AsyncClient().get(url, headers=named)
        if response.streaming:
            body = b"".join([chunk async for chunk in response.streaming_content]).decode()
        else:
            body = response.content.decode()
        return response.status_code, dict(response.headers), body

    return async_to_sync(run)()


def _job(tenant: Tenant, version: Any, n: int, run_jobs: Any) -> Job:
    request = services.JobRequest(
        model=version.model,
        version=version,
        inputs=from_list([{"x": i} for i in range(n)]),
        priority=0,
        chunk_size=2,
        max_attempts=3,
        options={},
    )
    return run_jobs(lambda: services.job_create(tenant=tenant, request=request))


def test_it_streams_progress_then_end(
    tenant: Tenant, key: Any, doubler: Any, run_jobs: Any
) -> None:
    job = _job(tenant, doubler, 5, run_jobs)
    status, headers, body = _get(f"/v1/jobs/{job.pk}/events", x_api_key=key[1])
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    frames = _frames(body)
    assert [f["event"] for f in frames] == ["progress"] * 3 + ["end"]
    done = [json.loads(f["data"])["done"] for f in frames]
    assert done == [2, 4, 5, 5]
    assert json.loads(frames[-1]["data"])["status"] == "succeeded"
    # Resume after the second event: only what follows.
    _, _, rest = _get(f"/v1/jobs/{job.pk}/events", x_api_key=key[1], last_event_id=frames[1]["id"])
    assert [f["event"] for f in _frames(rest)] == ["progress", "end"]


def test_an_expired_stream_of_a_finished_job_is_its_summary(
    tenant: Tenant, key: Any, doubler: Any, run_jobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import views

    job = _job(tenant, doubler, 1, run_jobs)

    class Expired:
        def meta(self, stream: str) -> None:
            return None

    monkeypatch.setattr(views, "get_log", Expired)
    status, _, body = _get(f"/v1/jobs/{job.pk}/events", x_api_key=key[1])
    assert status == 200
    frames = _frames(body)
    assert [f["event"] for f in frames] == ["progress", "end"]
    assert json.loads(frames[-1]["data"])["succeeded"] == 1


def test_events_need_the_jobs_scope_and_the_owner(
    tenant: Tenant, other_tenant: Tenant, doubler: Any, run_jobs: Any
) -> None:
    job = _job(tenant, doubler, 1, run_jobs)
    status, headers, _ = _get(f"/v1/jobs/{job.pk}/events")
    assert status == 401 and headers["Content-Type"] == "application/problem+json"
    infer_only = make_key(tenant, scopes=["infer"])[1]
    assert _get(f"/v1/jobs/{job.pk}/events", x_api_key=infer_only)[0] == 403
    stranger = make_key(other_tenant, scopes=["jobs"])[1]
    assert _get(f"/v1/jobs/{job.pk}/events", x_api_key=stranger)[0] == 404


def _open(url: str, raw: str) -> Any:
    """The response of an SSE request, not read yet (its slot is taken)."""

    async def run() -> Any:
        return await AsyncClient().get(url, headers={"X-API-Key": raw})

    return async_to_sync(run)()


def test_each_events_response_holds_one_of_the_tenants_stream_slots(
    tenant: Tenant, doubler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import runner

    monkeypatch.setattr(runner, "_send", lambda *a, **kw: None)  # the job stays queued
    tenant.concurrent_streams = 3
    tenant.save(update_fields=["concurrent_streams"])
    job = services.job_create(
        tenant=tenant,
        request=services.JobRequest(
            model=doubler.model,
            version=doubler,
            inputs=from_list([{"x": 1}]),
            priority=0,
            chunk_size=1,
            max_attempts=1,
            options={},
        ),
    )
    raw = make_key(tenant, scopes=["jobs"])[1]
    url = f"/v1/jobs/{job.pk}/events"
    opened = [_open(url, raw) for _ in range(6)]
    statuses = [response.status_code for response in opened]
    assert statuses == [200, 200, 200, 429, 429, 429]
    refused = opened[3]
    assert json.loads(refused.content)["type"] == "urn:sluice:problem:too-many-streams"
    assert refused["Retry-After"] == "1"
    assert stream_slots_held(tenant.pk) == 3
    for response in opened[:3]:
        response.close()  # the server drops them: the slots come back
    assert stream_slots_held(tenant.pk) == 0
    assert _open(url, raw).status_code == 200
