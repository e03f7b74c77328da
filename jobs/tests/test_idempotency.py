"""Idempotency-Key leases: a key in flight is leased to its request's process, answered 409 with
the lease's remaining time while it lasts, and free once the lease has lapsed; a request that
lost its key while it worked creates nothing (one job per key)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from inference.models import ModelVersion
from jobs import bulk, leases, services
from jobs.inputs import from_list
from jobs.models import IdempotencyKey, Job
from tenants.models import Tenant

BODY = {"model": "doubler", "inputs": [{"x": 1}]}


def _fingerprint(version: ModelVersion) -> str:
    return services.JobRequest(
        model=version.model,
        version=version,
        inputs=from_list(BODY["inputs"]),
        priority=0,
        chunk_size=500,
        max_attempts=3,
        options={},
    ).fingerprint()


def _in_flight(tenant: Tenant, version: ModelVersion, *, lease_left: float) -> IdempotencyKey:
    """A key row as another process's request leaves it while it creates its job."""
    now = timezone.now()
    return IdempotencyKey.objects.create(
        tenant=tenant,
        key="k",
        fingerprint=_fingerprint(version),
        created_at=now - timedelta(seconds=30),
        expires_at=now + timedelta(hours=24),
        lease_until=now + timedelta(seconds=lease_left),
    )


def _post(api: APIClient, run_jobs: Any) -> Any:
    return run_jobs(lambda: api.post("/v1/jobs", BODY, format="json", HTTP_IDEMPOTENCY_KEY="k"))


@pytest.mark.django_db
def test_a_key_in_flight_is_a_409_that_says_when_its_lease_runs_out(
    api: APIClient, doubler: ModelVersion, tenant: Tenant, run_jobs: Any
) -> None:
    _in_flight(tenant, doubler, lease_left=6.5)
    response = _post(api, run_jobs)
    assert response.status_code == 409
    assert response.json()["type"] == "urn:sluice:problem:idempotency-key-in-flight"
    assert 4 <= int(response["Retry-After"]) <= 7  # 6.5 s left, less the time this took
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_retry_after_is_never_more_than_one_lease(
    api: APIClient, doubler: ModelVersion, tenant: Tenant, run_jobs: Any, settings: Any
) -> None:
    """A renewal made after this request read the clock (or on a host whose clock is ahead)
    puts the lease a little beyond one lease from now."""
    settings.JOBS_IDEMPOTENCY_LEASE_SECONDS = 10
    _in_flight(tenant, doubler, lease_left=11.5)
    assert _post(api, run_jobs)["Retry-After"] == "10"


@pytest.mark.django_db
def test_a_key_whose_lease_lapsed_is_taken_over_by_the_next_request(
    api: APIClient, doubler: ModelVersion, tenant: Tenant, run_jobs: Any
) -> None:
    dead = _in_flight(tenant, doubler, lease_left=-0.5)  # its process stopped renewing
    response = _post(api, run_jobs)
    assert response.status_code == 201, response.json()
    [row] = IdempotencyKey.objects.all()
    assert row.pk != dead.pk
    assert str(row.job_id) == response.json()["id"]
    assert _post(api, run_jobs)["Idempotent-Replayed"] == "true"
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_a_key_held_by_this_process_is_not_taken_over_when_its_renewal_is_late(
    api: APIClient, doubler: ModelVersion, tenant: Tenant, run_jobs: Any
) -> None:
    row = _in_flight(tenant, doubler, lease_left=-0.5)
    leases.keeper.hold(row.pk)
    try:
        response = _post(api, run_jobs)
    finally:
        leases.keeper.release(row.pk)
    assert (response.status_code, response["Retry-After"]) == (409, "1")
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_a_created_job_releases_its_lease(api: APIClient, doubler: ModelVersion, run_jobs: Any):
    assert _post(api, run_jobs).status_code == 201
    row = IdempotencyKey.objects.get()
    assert not leases.keeper.holds(row.pk)


@pytest.mark.django_db(transaction=True)
def test_the_keeper_renews_held_leases_and_stops_when_none_is_held(
    doubler: ModelVersion, tenant: Tenant, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.JOBS_IDEMPOTENCY_LEASE_SECONDS = 1.5
    keeper = leases.LeaseKeeper()  # not one whose thread still sleeps a longer interval
    monkeypatch.setattr(leases, "keeper", keeper)
    claim = services.idempotency_begin(tenant=tenant, key="k", fingerprint="f")
    assert isinstance(claim, IdempotencyKey)
    first = claim.lease_until
    try:
        time.sleep(2.0)  # past the first lease: renewed every 0.5 s meanwhile
        claim.refresh_from_db()
        assert claim.lease_until > first + timedelta(seconds=0.4)
        assert claim.lease_until > timezone.now()
    finally:
        keeper.release(claim.pk)
    give_up = time.monotonic() + 5
    while keeper._thread is not None:  # it ends at its next tick, with nothing to hold
        assert time.monotonic() < give_up
        time.sleep(0.05)
    last = IdempotencyKey.objects.get(pk=claim.pk).lease_until
    time.sleep(1.0)
    assert IdempotencyKey.objects.get(pk=claim.pk).lease_until == last  # no longer renewed


@pytest.mark.django_db(transaction=True)
def test_a_request_whose_key_was_taken_over_mid_creation_creates_nothing(
    doubler: ModelVersion, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the fence exists for: request A stalls past its lease while creating its job
    (as if its process were paused), B takes the key over and creates the job; then A goes on.
    A's job must not commit, and A answers with B's job."""
    if connection.vendor != "postgresql":
        pytest.skip("two concurrent writers need PostgreSQL (SQLite runs one at a time)")
    stalled, resume = threading.Event(), threading.Event()
    insert = bulk.insert_tasks

    def stalling_insert(job: Job, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread().name.startswith("request-a"):
            stalled.set()
            assert resume.wait(30)
        insert(job, *args, **kwargs)

    monkeypatch.setattr(bulk, "insert_tasks", stalling_insert)
    request = services.JobRequest(
        model=doubler.model,
        version=doubler,
        inputs=from_list(BODY["inputs"]),
        priority=0,
        chunk_size=500,
        max_attempts=3,
        options={},
    )

    def submit() -> services.Submitted:
        return services.job_submit(
            tenant=tenant, request=request, key="k", describe=lambda job: {"id": str(job.pk)}
        )

    def run_a() -> services.Submitted:
        try:
            return submit()
        finally:
            connection.close()

    pool = ThreadPoolExecutor(1, thread_name_prefix="request-a")
    a = pool.submit(run_a)
    assert stalled.wait(30)
    a_row = IdempotencyKey.objects.get()
    # A's process stopped renewing (this test runs A in-process, so it also forgets holding it).
    IdempotencyKey.objects.filter(pk=a_row.pk).update(lease_until=timezone.now())
    leases.keeper.release(a_row.pk)
    b = submit()
    resume.set()
    answer_a = a.result(30)
    pool.shutdown()
    assert b.status == 201 and not b.replayed
    assert answer_a.replayed and answer_a.body == b.body
    assert list(Job.objects.values_list("pk", flat=True)) == [IdempotencyKey.objects.get().job_id]


def test_the_keeper_goes_on_renewing_after_a_failed_renewal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[list[int]] = []

    def failing_once(ids: list[int]) -> int:
        calls.append(list(ids))
        if len(calls) == 1:
            raise RuntimeError("a bug, say")
        return len(ids)

    monkeypatch.setattr(leases, "renew", failing_once)
    monkeypatch.setattr(leases.settings, "JOBS_IDEMPOTENCY_LEASE_SECONDS", 0.03)
    keeper = leases.LeaseKeeper()
    keeper.hold(1)
    give_up = time.monotonic() + 5
    while len(calls) < 2:
        assert time.monotonic() < give_up, calls
        time.sleep(0.01)
    keeper.release(1)
    assert calls[:2] == [[1], [1]]
    assert "could not renew 1 idempotency-key leases" in caplog.text
