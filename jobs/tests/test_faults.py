"""Fault tests with real processes: ``celery -A config worker -Q jobs`` and ``celery beat``
subprocesses, gunicorn, PostgreSQL and Redis. Runs in the PostgreSQL + Redis pass.

- kill -9 a worker mid-job, again and again: no task lost, no result twice, the job ends;
- an always-failing task is dead after exactly max_attempts and stays dead; replay works;
- 50 concurrent identical POSTs with one Idempotency-Key make exactly one job;
- a gunicorn killed (kill -9) or stopped (SIGSTOP) while it creates a job under an
  Idempotency-Key: the key is free again within its lease, and still makes one job;
- Redis (a server of the test's own) restarted empty mid-job: the job still completes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings
from django.db import connection, transaction

from inference.models import ModelVersion
from inference.tests.conftest import make_version
from inference.tests.fakes import BROKEN, DOUBLER
from jobs import services
from jobs.inputs import from_list
from jobs.models import IdempotencyKey, Job, Task, TaskStatus
from jobs.runner import ENGINE_ERROR
from tenants.models import Tenant
from tenants.tests.factories import make_key
from testing.processes import ROOT, free_port, gunicorn, running, running_process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (PostgreSQL + Redis pass)"),
    pytest.mark.timeout(240),
]


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("worker processes need a database they can share (PostgreSQL)")
    auth = quote(db["USER"] or "")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _env(redis_url: str | None = None, prefix: str | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": "fault-tests-" + "x" * 40,
        "SECURE_SSL_REDIRECT": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url or settings.REDIS_URL,
        "REDIS_KEY_PREFIX": prefix or settings.REDIS_KEY_PREFIX,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
        "INFERENCE_PRELOAD": "false",
        "WORKER_METRICS_PORT": "0",
        "JOBS_LEASE_SECONDS": "3",
        "JOBS_RECONCILE_SECONDS": "1",
        "JOBS_RETRY_BACKOFF_SECONDS": "0.2",
        "JOBS_RETRY_BACKOFF_MAX_SECONDS": "1",
        "RATELIMIT_ENABLE": "false",
    }


class Procs:
    """Worker and beat processes of one test; every one is killed at the end."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.all: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, args: list[str], ready: str | None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}-{len(self.all)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.all.append(proc)
        give_up = time.monotonic() + 60
        while ready and ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > give_up:
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        return proc

    def worker(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        return self._start(
            "worker",
            [
                "worker",
                "-Q",
                settings.JOBS_QUEUE,
                # prefork, as deployed: a threads-pool worker on Redis does not wake its event
                # loop when a task ends, so a full prefetch window stalls it up to 10 s.
                "--pool",
                "prefork",
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "INFO",
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
            ],
            ready="ready.",
        )

    def beat(self) -> subprocess.Popen[bytes]:
        schedule = self.tmp / f"beat-{uuid.uuid4().hex[:6]}"
        return self._start("beat", ["beat", "-s", str(schedule), "--loglevel", "INFO"], None)

    def stop(self) -> None:
        for proc in self.all:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Procs]]:
    made: list[Procs] = []

    def make(**env: str) -> Procs:
        made.append(Procs(tmp_path, _env(**env)))
        return made[-1]

    yield make
    for group in made:
        group.stop()


def _submit(tenant: Tenant, version: ModelVersion, n: int, **kw: Any) -> Job:
    request = services.JobRequest(
        model=version.model,
        version=version,
        inputs=from_list([{"x": i} for i in range(n)]),
        priority=0,
        chunk_size=kw.get("chunk_size", 10),
        max_attempts=kw.get("max_attempts", 3),
        options={},
    )
    return services.job_create(tenant=tenant, request=request)


def _wait_terminal(job: Job, timeout: float = 120) -> Job:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        job.refresh_from_db()
        if not job.is_active:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job still {job.status} ({job.done}/{job.total}) after {timeout}s")


def _assert_exactly_once(job: Job) -> None:
    tasks = list(job.tasks.order_by("index").values_list("index", "status", "result"))
    assert len(tasks) == job.total
    assert [t[0] for t in tasks] == list(range(job.total))
    assert all(status == TaskStatus.SUCCEEDED for _, status, _ in tasks)
    assert [r for _, _, r in tasks] == [{"y": 2 * i} for i in range(job.total)]
    # The counters moved once per task: a double-counted redelivery would overshoot.
    assert (job.succeeded, job.failed, job.done) == (job.total, 0, job.total)


def test_kill_9_workers_mid_job_loses_and_duplicates_nothing(
    tenant: Tenant, procs: Callable[..., Procs]
) -> None:
    slow = make_version("slow", options={**DOUBLER, "sleep": 0.15})
    group = procs()
    group.beat()
    steady = group.worker()
    victim = group.worker()
    job = _submit(tenant, slow, 600, chunk_size=10, max_attempts=20)
    kills = 0
    for _ in range(4):
        time.sleep(1.0)
        job.refresh_from_db()
        if not job.is_active:
            break
        os.killpg(victim.pid, signal.SIGKILL)  # kill -9, mid-chunk: no ack, no cleanup
        victim.wait()
        kills += 1
        victim = group.worker()
    assert kills >= 2, "the job ended before the workers could be killed: make it longer"
    assert steady.poll() is None
    job = _wait_terminal(job)
    assert job.status == "succeeded"
    _assert_exactly_once(job)
    # Some tasks really were run again after a kill (their attempt count shows it).
    assert Task.objects.filter(job=job, attempts__gt=1).exists()


def test_an_always_failing_task_dies_after_exactly_max_attempts_and_replays(
    tenant: Tenant, procs: Callable[..., Procs]
) -> None:
    broken = make_version("broken", options=BROKEN)
    group = procs()
    group.beat()
    group.worker()
    job = _wait_terminal(_submit(tenant, broken, 3, chunk_size=1, max_attempts=3))
    assert (job.status, job.failed, job.succeeded) == ("failed", 3, 0)
    time.sleep(3)  # reconciler ticks and lease expiries: nothing may run a dead task again
    rows = list(Task.objects.filter(job=job).values_list("status", "attempts", "last_error"))
    assert rows == [(TaskStatus.DEAD, 3, ENGINE_ERROR)] * 3
    # Fix the model (a new checksum, so workers load it again) and replay every dead task.
    ModelVersion.objects.filter(pk=broken.pk).update(runtime_options=DOUBLER, checksum="fixed")
    assert services.dead_replay(job=job) == 3
    job = _wait_terminal(job)
    assert job.status == "succeeded"
    _assert_exactly_once(job)


def test_fifty_concurrent_identical_posts_make_one_job(tenant: Tenant, tmp_path: Path) -> None:
    make_version("doubler", options={**DOUBLER, "sleep": 0.01})
    raw = make_key(tenant, scopes=["jobs"])[1]
    port = free_port()
    body = {"model": "doubler", "inputs": [{"x": i} for i in range(2000)]}
    headers = {"X-API-Key": raw, "Idempotency-Key": f'"{uuid.uuid4().hex}"'}
    cmd = gunicorn(port, threads=16)
    cmd[cmd.index("-w") + 1] = "3"
    with running(cmd, _env(), port=port) as base:
        gate = threading.Barrier(50)

        def post(_: int) -> httpx.Response:
            gate.wait()
            return httpx.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=60)

        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(post, range(50)))
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {201, 409}, statuses
        created = [a.json() for a in answers if a.status_code == 201]
        assert created and all(c == created[0] for c in created)
        for conflict in (a for a in answers if a.status_code == 409):
            assert conflict.json()["type"] == "urn:sluice:problem:idempotency-key-in-flight"
            assert 1 <= int(conflict.headers["Retry-After"]) <= 10  # the lease's remaining time
        assert Job.objects.count() == 1
        assert Job.objects.get().total == 2000
        # A retry after the fact gets the same job again.
        late = httpx.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=60)
        assert (late.status_code, late.json()["id"]) == (201, created[0]["id"])
        assert late.headers["Idempotent-Replayed"] == "true"


LEASE = 3  # JOBS_IDEMPOTENCY_LEASE_SECONDS of the servers below


@contextlib.contextmanager
def _two_gunicorns() -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """The base URLs of two gunicorns on the test's database, and the first one's process."""
    env = {**_env(), "JOBS_IDEMPOTENCY_LEASE_SECONDS": str(LEASE)}
    first_port, second_port = free_port(), free_port()
    with (
        running(gunicorn(second_port), env, port=second_port) as second,
        running_process(gunicorn(first_port), env, port=first_port) as (first, proc),
    ):
        yield first, second, proc


def _start_creating(
    pool: ThreadPoolExecutor, base: str, body: dict[str, Any], headers: dict[str, str]
) -> Future[httpx.Response]:
    """POST the job; return once the request has claimed its key. The request then waits in
    the middle of creating the job (its job row written, its tasks not) until the caller's
    transaction ends: a SHARE lock on the task table holds up the tasks' COPY."""
    with connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {Task._meta.db_table} IN SHARE MODE")
    pending = pool.submit(httpx.post, f"{base}/v1/jobs", json=body, headers=headers, timeout=60)
    give_up = time.monotonic() + 30
    while not IdempotencyKey.objects.exists():
        assert time.monotonic() < give_up, "the request never claimed its key"
        time.sleep(0.05)
    return pending


def _post_until_created(
    base: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[httpx.Response, list[int]]:
    """POST, and after each 409 wait exactly its Retry-After; the answer and the waits."""
    waits: list[int] = []
    while True:
        answer = httpx.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=30)
        if answer.status_code != 409 or len(waits) > LEASE + 2:
            return answer, waits
        waits.append(int(answer.headers["Retry-After"]))
        time.sleep(waits[-1])


def test_a_key_whose_creating_process_was_killed_is_free_within_its_lease(
    tenant: Tenant, capsys: pytest.CaptureFixture[str]
) -> None:
    make_version("doubler", options=DOUBLER)
    body = {"model": "doubler", "inputs": [{"x": i} for i in range(10)]}
    headers = {"X-API-Key": make_key(tenant, scopes=["jobs"])[1], "Idempotency-Key": '"crash"'}
    with _two_gunicorns() as (first, other, victim), ThreadPoolExecutor(1) as pool:
        with transaction.atomic():
            pending = _start_creating(pool, first, body, headers)
            time.sleep(LEASE * 1.5)  # past its first lease: the live request's process renews it
            live = httpx.post(f"{other}/v1/jobs", json=body, headers=headers, timeout=10)
            assert live.status_code == 409, live.text
            assert 1 <= int(live.headers["Retry-After"]) <= LEASE
            os.killpg(victim.pid, signal.SIGKILL)  # mid-creation: no cleanup of any kind
            victim.wait()
            killed = time.monotonic()
        with pytest.raises(httpx.HTTPError):
            pending.result(10)
        created, waits = _post_until_created(other, body, headers)
        locked_for = time.monotonic() - killed
    assert created.status_code == 201, (created.status_code, created.text, waits)
    # Retry-After told the truth: the one wait it asked for was enough.
    assert len(waits) <= 1 and locked_for <= 2 * LEASE, (waits, locked_for)
    assert Job.objects.count() == 1 and created.json()["total"] == 10
    with capsys.disabled():
        print(f"\nkey locked {locked_for:.2f} s after kill -9 (lease {LEASE} s, waits {waits})")


def test_a_stalled_creation_that_lost_its_key_answers_with_the_job_of_the_key(
    tenant: Tenant, capsys: pytest.CaptureFixture[str]
) -> None:
    """The holder is alive but stopped past its lease: another request takes the key over and
    creates the job; the holder, resumed, finds it lost the key and creates nothing."""
    make_version("doubler", options=DOUBLER)
    body = {"model": "doubler", "inputs": [{"x": i} for i in range(10)]}
    headers = {"X-API-Key": make_key(tenant, scopes=["jobs"])[1], "Idempotency-Key": '"pause"'}
    with _two_gunicorns() as (first, other, holder), ThreadPoolExecutor(1) as pool:
        with transaction.atomic():
            pending = _start_creating(pool, first, body, headers)
            os.killpg(holder.pid, signal.SIGSTOP)
            stopped = time.monotonic()
        try:
            created, waits = _post_until_created(other, body, headers)
            taken_after = time.monotonic() - stopped
        finally:
            os.killpg(holder.pid, signal.SIGCONT)
        assert created.status_code == 201, (created.status_code, created.text, waits)
        assert len(waits) <= 1 and taken_after <= 2 * LEASE, (waits, taken_after)
        first_answer = pending.result(60)
    assert first_answer.status_code == 201, first_answer.text
    assert list(Job.objects.values_list("pk", flat=True)) == [uuid.UUID(created.json()["id"])]
    assert first_answer.json()["id"] == created.json()["id"]
    assert first_answer.headers.get("Idempotent-Replayed") == "true"
    with capsys.disabled():
        print(
            f"\nkey taken over {taken_after:.2f} s after SIGSTOP (lease {LEASE} s, waits {waits})"
        )


@contextlib.contextmanager
def _redis_server(port: int, tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                break
        time.sleep(0.05)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_redis_restart_mid_job_still_completes(
    tenant: Tenant, procs: Callable[..., Procs], tmp_path: Path
) -> None:
    make_version("slow", options={**DOUBLER, "sleep": 0.2})
    raw = make_key(tenant, scopes=["jobs"])[1]
    redis_port = free_port()
    own = f"redis://127.0.0.1:{redis_port}/0"
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    with _redis_server(redis_port, tmp_path) as first:
        group = procs(redis_url=own, prefix=prefix)
        group.beat()
        group.worker()
        port = free_port()
        with running(gunicorn(port), _env(redis_url=own, prefix=prefix), port=port) as base:
            body = {"model": "slow", "inputs": [{"x": i} for i in range(300)]}
            body["options"] = {"chunk_size": 10, "max_attempts": 10}
            created = httpx.post(f"{base}/v1/jobs", json=body, headers={"X-API-Key": raw})
            assert created.status_code == 201, created.text
            job = Job.objects.get(pk=created.json()["id"])
            give_up = time.monotonic() + 60
            while job.succeeded < 40 and time.monotonic() < give_up:
                time.sleep(0.1)
                job.refresh_from_db()
            assert job.is_active, "the job ended before Redis could be restarted"
            first.kill()  # Redis dies: queued messages, stream and beat state are gone
            first.wait()
            time.sleep(1)
            with _redis_server(redis_port, tmp_path):
                job = _wait_terminal(job, timeout=120)
                assert job.status == "succeeded"
                _assert_exactly_once(job)
                final = httpx.get(f"{base}/v1/jobs/{job.pk}", headers={"X-API-Key": raw})
                assert final.json()["status"] == "succeeded"
