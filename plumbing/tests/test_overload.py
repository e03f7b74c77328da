"""gunicorn sheds load past ``WEB_MAX_IN_FLIGHT``: with its bound held by long requests
(result followers), a real gunicorn answers the next request 503 + ``Retry-After`` at once,
keeps answering health probes, and serves again when the bound frees."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from plumbing.overload import Admission
from testing.processes import free_port, gunicorn, manage, own_database, running, server_env

BOUND = 2


def test_admission_takes_requests_up_to_its_bound():
    admission = Admission(2)
    assert admission.enter() and admission.enter()
    assert not admission.enter()
    admission.leave()
    assert admission.enter()


@pytest.fixture
def provisioned(tmp_path) -> Iterator[dict[str, str]]:
    with own_database(tmp_path) as url:
        # Heartbeats often: a closed follower is noticed (at a write) within a second.
        env = server_env(
            url,
            RATELIMIT_ENABLE="false",
            WEB_MAX_IN_FLIGHT=str(BOUND),
            SSE_HEARTBEAT_SECONDS="0.3",
        )
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "Busy", "--streams", "10")
        env["KEY"] = manage(env, "createapikey", "--tenant", "busy", "--scopes", "jobs")
        manage(env, "builddigits")
        yield env


@pytest.mark.e2e
@pytest.mark.django_db
def test_gunicorn_answers_503_at_once_past_its_bound(provisioned):
    port = free_port()
    headers = {"X-API-Key": provisioned["KEY"]}
    with (
        running(gunicorn(port, threads=BOUND + 2), provisioned, port=port) as base,
        httpx.Client(timeout=30) as client,
        contextlib.ExitStack() as followers,
    ):
        job = client.post(
            f"{base}/v1/jobs",
            json={"model": "digits", "inputs": [{"pixels": [0.0] * 64}]},
            headers=headers,
        )
        assert job.status_code == 201, job.text
        # No worker runs the job: each follower stays open, holding a place in the bound.
        url = f"{base}/v1/jobs/{job.json()['id']}/results?format=ndjson&follow=true"
        for _ in range(BOUND):
            follower = followers.enter_context(client.stream("GET", url, headers=headers))
            assert follower.status_code == 200
            next(follower.iter_bytes())  # the first (blank) line: it is being served
        started = time.monotonic()
        refused = httpx.get(f"{base}/v1/jobs", headers=headers, timeout=10)
        assert time.monotonic() - started < 1
        assert refused.status_code == 503
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert refused.json()["type"] == "urn:sluice:problem:overloaded"
        assert refused.headers["Retry-After"] == "1"
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        followers.close()
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/v1/jobs", headers=headers, timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the bound never freed"
            time.sleep(0.1)
