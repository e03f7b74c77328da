"""Following a running job's results end to end: real server processes, a real Celery worker
and real clients (httpx streaming) reading the lines while the job runs.

- PostgreSQL + Redis pass: gunicorn (WSGI) and daphne (``manage.py serve --no-worker``, ASGI)
  on one database, and a ``celery worker -Q jobs`` process. One client follows through each
  server at once, and a third drops its connection midway (on daphne) and resumes with
  ``after`` on gunicorn.
- Embedded pass: ``manage.py serve`` (daphne with its in-process worker, SQLite, the in-memory
  log and broker); one client follows, another drops and resumes.

Every client must get every task's line exactly once, in commit order, the first while the job
was still running, and see its response end (cleanly) once the job has ended.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
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

pytestmark = [pytest.mark.e2e, pytest.mark.django_db, pytest.mark.timeout(240)]

INPUTS, CHUNK = 48, 4  # 12 chunks of half a second each: the job runs for seconds
REGISTER = (
    "from inference.tests.conftest import make_version;"
    "from inference.tests.fakes import DOUBLER;"
    "make_version('slow', options={**DOUBLER, 'sleep': 0.5})"
)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The base URLs of the servers of this pass, and an API key with the jobs scope."""
    with own_database(tmp_path) as url:
        env = server_env(
            url,
            RATELIMIT_ENABLE="false",
            INFERENCE_PRELOAD="false",
            WORKER_METRICS_PORT="0",
            MEDIA_ROOT=str(tmp_path / "media"),
            # Far apart, so that only the job's events can explain lines that keep pace.
            JOBS_FOLLOW_POLL_SECONDS="30",
            SSE_HEARTBEAT_SECONDS="30",
        )
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "Owner")
        key = manage(env, "createapikey", "--tenant", "owner", "--scopes", "jobs")
        manage(env, "shell", "-c", REGISTER)
        with contextlib.ExitStack() as stack:
            daphne_port = free_port()
            serve = [sys.executable, "manage.py", "serve", "--port", str(daphne_port)]
            bases: dict[str, str] = {}
            if settings.REDIS_URL:
                if not url.startswith("postgres"):
                    pytest.skip("the worker process needs a database it can share (PostgreSQL)")
                stack.enter_context(celery_worker(env, queues=settings.JOBS_QUEUE))
                wsgi_port = free_port()
                bases["wsgi"] = stack.enter_context(
                    running(gunicorn(wsgi_port), env, port=wsgi_port)
                )
                serve.append("--no-worker")
            bases["asgi"] = stack.enter_context(running(serve, env, port=daphne_port))
            yield {"bases": bases, "headers": {"X-API-Key": key}}


class Follower(threading.Thread):
    """One client following the job's results; ``stop_after`` lines, it hangs up."""

    def __init__(
        self,
        base: str,
        job: str,
        headers: dict[str, str],
        *,
        after: str | None = None,
        stop_after: int | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.base, self.job, self.headers = base, job, headers
        self.after, self.stop_after = after, stop_after
        self.lines: list[dict[str, Any]] = []
        self.status_at_first_line: dict[str, Any] = {}
        self.status_at_end: dict[str, Any] = {}
        self.ended = False
        self.ended_at = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc

    def _job(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.base}/v1/jobs/{self.job}", headers=self.headers, timeout=10)
        return dict(answer.json())

    def _follow(self) -> None:
        params = {"format": "ndjson", "follow": "true"}
        if self.after:
            params["after"] = self.after
        url = f"{self.base}/v1/jobs/{self.job}/results"
        with httpx.stream("GET", url, params=params, headers=self.headers, timeout=60) as answer:
            assert answer.status_code == 200, answer.read()
            assert answer.headers["content-type"] == "application/x-ndjson"
            for raw in answer.iter_lines():
                if not raw.strip():
                    continue  # a heartbeat
                self.lines.append(json.loads(raw))
                if len(self.lines) == 1:
                    self.status_at_first_line = self._job()
                if self.stop_after and len(self.lines) == self.stop_after:
                    return  # hangs up mid-stream
        # The body ended as HTTP says it should (httpx raises on a cut chunked body).
        self.ended, self.ended_at = True, time.time()
        self.status_at_end = self._job()


def _finish(followers: list[Follower]) -> None:
    for follower in followers:
        follower.join(timeout=120)
        assert not follower.is_alive(), "a follower never saw its response end"
        if follower.error is not None:
            raise follower.error


def _position(line: dict[str, Any]) -> tuple[int, int]:
    seq, _, task = line["cursor"].partition("-")
    return int(seq), int(task)


def test_clients_follow_a_running_job_and_get_every_line_exactly_once(
    servers: dict[str, Any],
) -> None:
    headers, bases = servers["headers"], servers["bases"]
    first = next(iter(bases.values()))
    created = httpx.post(
        f"{first}/v1/jobs",
        json={
            "model": "slow",
            "inputs": [{"x": i} for i in range(INPUTS)],
            "options": {"chunk_size": CHUNK},
        },
        headers=headers,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    job = created.json()["id"]
    whole = [Follower(base, job, headers) for base in bases.values()]
    dropping = Follower(bases["asgi"], job, headers, stop_after=5)
    for follower in [*whole, dropping]:
        follower.start()
    _finish([dropping])
    assert not dropping.ended and len(dropping.lines) == 5
    resumed = Follower(
        bases.get("wsgi", bases["asgi"]), job, headers, after=dropping.lines[-1]["cursor"]
    )
    resumed.start()
    _finish([*whole, resumed])

    every = httpx.get(
        f"{first}/v1/jobs/{job}/results", params={"format": "ndjson"}, headers=headers, timeout=30
    )
    expected = {line["task"]: line for line in map(json.loads, every.text.splitlines())}
    assert len(expected) == INPUTS
    assert all(line["status"] == "succeeded" for line in expected.values())
    for lines in [f.lines for f in whole] + [dropping.lines + resumed.lines]:
        tasks = [line["task"] for line in lines]
        assert len(tasks) == len(set(tasks)) == INPUTS  # each task once, none missing
        plain = {x["task"]: {k: v for k, v in x.items() if k != "cursor"} for x in lines}
        assert plain == expected  # the lines of the plain NDJSON, plus their cursor
        positions = [_position(line) for line in lines]
        assert positions == sorted(positions) and len(set(positions)) == INPUTS
    for follower in [*whole, resumed]:
        assert follower.ended
        assert follower.status_at_end["status"] == "succeeded"
        # The response ended with the job (woken by its end event), not a poll later.
        finished = datetime.fromisoformat(follower.status_at_end["finished_at"]).timestamp()
        assert follower.ended_at - finished < 5, follower.ended_at - finished
    for follower in [*whole, dropping]:
        # Lines came while the job ran, not all at its end.
        running_then = follower.status_at_first_line
        assert running_then["status"] == "running", running_then
        assert running_then["done"] < INPUTS
