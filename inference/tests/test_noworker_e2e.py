"""No silent hang without a worker, with real processes (the PostgreSQL + Redis pass): a
stopped or killed worker's queue is refused with 503 ``no-worker`` at once, by gunicorn and the
unary server alike, and served again as soon as a worker consumes it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from django.conf import settings

from inference.tests.conftest import make_version, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (PostgreSQL + Redis pass)"),
]


def _infer(base: str, key: str, *, stream: bool = False) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = httpx.post(
        f"{base}/v1/models/doubler/infer" + ("?stream=true" if stream else ""),
        json={"input": {"x": 3}, "timeout_ms": 5000},
        headers={"X-API-Key": key},
        timeout=30,
    )
    return time.monotonic() - started, response


def _is_no_worker(response: httpx.Response) -> bool:
    if response.status_code != 503:
        return False
    problem = response.json()
    return bool(problem["type"] == "urn:sluice:problem:no-worker" and problem["queue"] == "cpu")


def test_a_stopped_worker_is_a_503_at_once_and_its_return_serves_again(
    stack: dict[str, Any], unary: str, key: tuple
) -> None:
    make_version()
    base = stack["base"]
    for server in (base, unary):  # served, and the model loaded, while the worker runs
        wait_for(lambda s=server: _infer(s, key[1])[1].status_code == 200, "a first answer", 60)
    assert "cpu" not in httpx.get(f"{base}/readyz").json()["without_workers"]

    stack["stop_worker"]()  # SIGTERM: the worker withdraws its claims as it stops consuming
    stopped = time.monotonic()
    time.sleep(1.1)  # the web processes' cached answer (WORKER_PRESENCE_CACHE_SECONDS) lapses
    for server in (base, unary):
        for stream in (False, True):
            took, response = _infer(server, key[1], stream=stream)
            assert _is_no_worker(response), (server, stream, response.text)
            assert "No worker is serving queue cpu" in response.json()["detail"]
            assert response.headers["retry-after"] == "1"
            assert took < 1, (server, stream, took)
    print(f"stopped worker: no-worker answers from {time.monotonic() - stopped:.2f} s after")
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200  # degraded, not unready: the web pod stays in rotation
    assert ready.json()["status"] == "degraded" and "cpu" in ready.json()["without_workers"]

    stack["start_worker"]()
    back = time.monotonic()
    for server in (base, unary):
        wait_for(lambda s=server: _infer(s, key[1])[1].status_code == 200, "served again", 10)
    print(f"worker back: served again {time.monotonic() - back:.2f} s after it was ready")
    assert httpx.get(f"{base}/readyz").json()["status"] in ("ok", "degraded")
    assert "cpu" not in httpx.get(f"{base}/readyz").json()["without_workers"]


def test_a_killed_worker_is_a_503_once_its_claim_lapses(stack: dict[str, Any], key: tuple) -> None:
    make_version()
    base = stack["base"]
    wait_for(lambda: _infer(base, key[1])[1].status_code == 200, "a first answer", 60)
    stack["kill_worker"]()  # SIGKILL: no withdrawal, the claim lapses after its TTL
    killed = time.monotonic()
    lapse = settings.WORKER_PRESENCE_TTL_SECONDS + settings.WORKER_PRESENCE_CACHE_SECONDS
    time.sleep(lapse)
    took, response = _infer(base, key[1])
    assert _is_no_worker(response), response.text
    assert took < 1
    print(f"killed worker: no-worker answer {time.monotonic() - killed:.2f} s after the kill")
