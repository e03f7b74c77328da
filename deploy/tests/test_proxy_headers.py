"""Forwarded headers are believed only from a trusted proxy, on every server the deployment
runs (each started natively with its compose command): a client that forges
``X-Forwarded-For`` does not get a new per-IP budget with each request."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest

from deploy.tests.conftest import answers, free_port, spawn, wait_for
from deploy.tests.test_processes import command, replace_option

pytestmark = pytest.mark.e2e

LIMIT = 5  # requests per hour from one address: no window edge within a test


def started(service: str, env: dict[str, str], port: int) -> list[str]:
    cmd = command(service)
    if service == "web":
        env["PORT"] = str(port)  # deploy/gunicorn.conf.py binds it
        return cmd
    return replace_option(cmd, "--port", str(port))


def statuses(service: str, env: dict[str, str], tmp_path: Path, forwarded: list[str]) -> list[int]:
    """The status of one unauthenticated request per ``X-Forwarded-For`` value."""
    port = free_port()
    env = {**env, "RATELIMIT_IP_RATE": f"{LIMIT}/h"}
    # Counters of its own: the per-IP buckets must not carry over from another server.
    env["REDIS_KEY_PREFIX"] = f"{os.environ.get('REDIS_KEY_PREFIX', 'sluice')}:{uuid.uuid4().hex}"
    cmd = started(service, env, port)
    base = f"http://127.0.0.1:{port}"
    with spawn(cmd, env, tmp_path / f"{service}.log") as server:
        wait_for(answers(f"{base}/healthz"), running=server, what=service)
        with httpx.Client(timeout=10) as client:
            return [
                client.get(f"{base}/v1/tenant", headers={"X-Forwarded-For": xff}).status_code
                for xff in forwarded
            ]


@pytest.mark.parametrize("service", ["web", "unary", "asgi"])
def test_it_limits_a_client_that_forges_x_forwarded_for_without_a_trusted_proxy(
    service: str, process_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**process_env, "TRUSTED_PROXY_COUNT": "0"}
    forged = [f"203.0.113.{i}" for i in range(LIMIT + 3)]
    seen = statuses(service, env, tmp_path, forged)
    assert seen == [401] * LIMIT + [429] * 3


@pytest.mark.parametrize("service", ["web", "unary", "asgi"])
def test_it_takes_the_client_address_from_a_trusted_proxy(
    service: str, process_env: dict[str, str], tmp_path: Path
) -> None:
    # This test's client plays the proxy (127.0.0.1), appending each client's address.
    env = {**process_env, "TRUSTED_PROXY_COUNT": "1", "TRUSTED_PROXY_IPS": "127.0.0.1"}
    clients = [f"198.51.100.7, 203.0.113.{i}" for i in range(LIMIT + 1)]  # left part: forged
    one_client = ["203.0.113.250"] * (LIMIT + 1)
    seen = statuses(service, env, tmp_path, clients + one_client)
    assert seen == [401] * (LIMIT + 1) + [401] * LIMIT + [429]
