"""A job's long-lived answers end when the key that opened them is revoked: real gunicorn and
daphne (``manage.py serve --no-worker``) processes, a real ``celery worker -Q jobs`` running a
job that lasts far longer than the test waits, PostgreSQL + Redis.

Three clients read while the job runs — the results followed as NDJSON through gunicorn and
through daphne, and the progress events (SSE) through daphne — then their key is revoked in
the database. Each response must end within ``API_KEY_CACHE_SECONDS`` + ``WS_REAUTH_SECONDS``
(1 s each here) plus a little for a loaded machine, long before the job does: the NDJSON
bodies just end, the SSE one with an ``error`` event ``unauthenticated``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from django.conf import settings

from testing.processes import (
    celery_worker,
    free_port,
    gunicorn,
    manage,
    own_database,
    running,
    server_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db, pytest.mark.timeout(240)]

CACHE_S, REAUTH_S = 1, 1
SLACK_S = 1.5  # scheduling on a loaded two-core machine
INPUTS, CHUNK = 600, 2  # 300 chunks of a tenth of a second: the job outlives the test
REGISTER = (
    "from inference.tests.conftest import make_version;"
    "from inference.tests.fakes import DOUBLER;"
    "make_version('slow', options={**DOUBLER, 'sleep': 0.1})"
)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: the servers and the worker share Redis")
    with own_database(tmp_path) as url:
        if not url.startswith("postgres"):
            pytest.skip("the worker process needs a database it can share (PostgreSQL)")
        env = server_env(
            url,
            RATELIMIT_ENABLE="false",
            INFERENCE_PRELOAD="false",
            WORKER_METRICS_PORT="0",
            MEDIA_ROOT=str(tmp_path / "media"),
            API_KEY_CACHE_SECONDS=str(CACHE_S),
            WS_REAUTH_SECONDS=str(REAUTH_S),
        )
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "Owner")
        owner = manage(env, "createapikey", "--tenant", "owner", "--scopes", "jobs")
        reader = manage(env, "createapikey", "--tenant", "owner", "--scopes", "jobs")
        manage(env, "shell", "-c", REGISTER)
        with contextlib.ExitStack() as stack:
            stack.enter_context(celery_worker(env, queues=settings.JOBS_QUEUE))
            wsgi_port, asgi_port = free_port(), free_port()
            wsgi = stack.enter_context(running(gunicorn(wsgi_port), env, port=wsgi_port))
            serve = [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(asgi_port)]
            asgi = stack.enter_context(running(serve, env, port=asgi_port))
            yield {"wsgi": wsgi, "asgi": asgi, "owner": owner, "reader": reader, "db": url}


class Reader(threading.Thread):
    """One client reading a long-lived answer: when each NDJSON line or SSE event came, its last
    data, how it ended."""

    def __init__(self, url: str, params: dict[str, str], key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.params, self.key = url, params, key
        self.arrivals: list[float] = []
        self.last: str = ""
        self.ended_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            headers = {"X-API-Key": self.key}
            with httpx.stream(
                "GET", self.url, params=self.params, headers=headers, timeout=60
            ) as answer:
                assert answer.status_code == 200, answer.read()
                for line in answer.iter_lines():
                    if line.startswith(("{", "event: ")):
                        self.arrivals.append(time.monotonic())
                    if line.startswith(("{", "data: ")):
                        self.last = line
            self.ended_at = time.monotonic()  # a complete body (httpx raises on a cut one)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc


def _revoke(database_url: str, key: str) -> None:
    """Revoke the key in the database, as the admin or another process would."""
    prefix = key.removeprefix("sk_live_").split(".")[0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE tenants_tenantapikey SET revoked = true WHERE prefix = %s", [prefix])


def test_a_revoked_keys_job_answers_end_within_a_recheck(servers: dict[str, Any]) -> None:
    created = httpx.post(
        f"{servers['wsgi']}/v1/jobs",
        json={
            "model": "slow",
            "inputs": [{"x": i} for i in range(INPUTS)],
            "options": {"chunk_size": CHUNK},
        },
        headers={"X-API-Key": servers["owner"]},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    job = created.json()["id"]
    follow, key = {"format": "ndjson", "follow": "true"}, servers["reader"]
    readers = {
        "ndjson-gunicorn": Reader(f"{servers['wsgi']}/v1/jobs/{job}/results", follow, key),
        "ndjson-daphne": Reader(f"{servers['asgi']}/v1/jobs/{job}/results", follow, key),
        "events-daphne": Reader(f"{servers['asgi']}/v1/jobs/{job}/events", {}, key),
    }
    for reader in readers.values():
        reader.start()
    give_up = time.monotonic() + 60
    while not all(len(r.arrivals) >= 3 for r in readers.values()):
        assert time.monotonic() < give_up, {n: len(r.arrivals) for n, r in readers.items()}
        assert all(r.error is None for r in readers.values()), [r.error for r in readers.values()]
        time.sleep(0.05)
    _revoke(servers["db"], servers["reader"])
    revoked = time.monotonic()
    figures = {}
    for name, reader in readers.items():
        reader.join(timeout=30)
        assert reader.error is None, (name, reader.error)
        assert reader.ended_at is not None, f"{name} never ended"
        figures[name] = {
            "ended_after_s": round(reader.ended_at - revoked, 2),
            "after_revoke": sum(t > revoked for t in reader.arrivals),
        }
    print(f"revoked key's answers: {json.dumps(figures)}")
    status = httpx.get(
        f"{servers['wsgi']}/v1/jobs/{job}", headers={"X-API-Key": servers["owner"]}, timeout=30
    ).json()
    assert status["status"] == "running", status  # the answers ended, not the job
    for name, numbers in figures.items():
        assert numbers["ended_after_s"] < CACHE_S + REAUTH_S + SLACK_S, (name, figures)
    assert readers["events-daphne"].last == 'data: {"code":"unauthenticated"}'
