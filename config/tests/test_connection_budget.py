"""A server process holds no more PostgreSQL connections than its pool
(``DATABASE_POOL_MAX_SIZE``) under concurrent load, on gunicorn, uvicorn and daphne; and an
open event stream gives its connection back, so streams do not exhaust the pool."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from django.conf import settings

from testing.processes import (
    free_port,
    gunicorn,
    manage,
    own_database,
    running,
    server_env,
    uvicorn,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

POOL = 3
CLIENTS = 24  # concurrent requests, eight times the pool


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory) -> Iterator[tuple[dict[str, str], str]]:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("a connection pool is PostgreSQL's (the PostgreSQL + Redis pass runs it)")
    with own_database(tmp_path_factory.mktemp("budget")) as url:
        # gunicorn admits all its threads (not the pool's worth): requests wait for a
        # connection instead of being shed, so the pool's bound is what is tested.
        env = server_env(
            url,
            RATELIMIT_ENABLE="false",
            DATABASE_POOL_MAX_SIZE=str(POOL),
            WEB_MAX_IN_FLIGHT="16",
        )
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "Budget", "--streams", "20")
        env["KEY"] = manage(
            env, "createapikey", "--tenant", "budget", "--scopes", "infer,jobs,streams"
        )
        manage(env, "builddigits")
        yield env, url.rsplit("/", 1)[1]


def held(database: str) -> int:
    db = settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres"
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


def command(server: str, port: int) -> list[str]:
    if server == "gunicorn":
        return gunicorn(port, threads=16)
    if server == "uvicorn":
        return uvicorn(port)
    return [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)]


@contextlib.contextmanager
def peak_connections(database: str) -> Iterator[list[int]]:
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], held(database))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn", "daphne"])
def test_a_server_holds_no_more_connections_than_its_pool(server, provisioned):
    env, database = provisioned
    port = free_port()
    headers = {"X-API-Key": env["KEY"]}
    with running(command(server, port), env, port=port) as base:
        end = time.monotonic() + 3

        def load() -> list[int]:
            seen = []
            with httpx.Client(timeout=30) as client:
                while time.monotonic() < end:
                    seen.append(client.get(f"{base}/v1/jobs", headers=headers).status_code)
            return seen

        with peak_connections(database) as peak, ThreadPoolExecutor(CLIENTS) as pool:
            statuses = [s for seen in pool.map(lambda _: load(), range(CLIENTS)) for s in seen]
    assert set(statuses) <= {200, 503}, set(statuses)
    assert statuses.count(200) > len(statuses) / 2
    assert 0 < peak[0] <= POOL, f"{server} held {peak[0]} connections"


def test_open_event_streams_hold_no_connection(provisioned):
    env, database = provisioned
    port = free_port()
    headers = {"X-API-Key": env["KEY"]}
    cmd = [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)]
    with running(cmd, env, port=port) as base, contextlib.ExitStack() as streams:
        client = streams.enter_context(httpx.Client(timeout=30))
        for _ in range(POOL + 2):  # more open streams than the pool has connections
            job = client.post(
                f"{base}/v1/jobs",
                json={"model": "digits", "inputs": [{"pixels": [0.0] * 64}]},
                headers=headers,
            )
            assert job.status_code in (201, 202), job.text
            events = streams.enter_context(
                client.stream("GET", f"{base}/v1/jobs/{job.json()['id']}/events", headers=headers)
            )
            assert events.status_code == 200
        started = time.monotonic()
        assert client.get(f"{base}/v1/jobs", headers=headers).status_code == 200
        assert time.monotonic() - started < 2  # no wait for a connection a stream holds
        assert held(database) <= POOL
