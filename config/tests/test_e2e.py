"""Real server processes: the all-in-one `serve` and two gunicorns sharing one Redis."""

from __future__ import annotations

import sys
import time

import httpx
import pytest
from django.conf import settings

from testing.processes import free_port, gunicorn, manage, own_database, running, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


@pytest.fixture
def provisioned(tmp_path):
    """A migrated database of the test's own with a tenant (6 requests/min) and a key."""
    with own_database(tmp_path) as url:
        env = server_env(url, RATELIMIT_IP_RATE="1000/h")
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "E2E", "--rpm", "6")
        env["E2E_KEY"] = manage(env, "createapikey", "--tenant", "e2e", "--scopes", "infer")
        yield env


def test_serve_runs_everything_in_one_process(provisioned):
    port = free_port()
    cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
    with running(cmd, provisioned, port=port) as base:
        ok = httpx.get(f"{base}/v1/tenant", headers={"X-API-Key": provisioned["E2E_KEY"]})
        assert ok.status_code == 200
        assert ok.json()["slug"] == "e2e"
        bad = httpx.get(f"{base}/v1/tenant", headers={"X-API-Key": "sk_live_nopenope.x"})
        assert bad.status_code == 401
        assert bad.headers["content-type"] == "application/problem+json"
        assert httpx.get(f"{base}/readyz").json()["status"] == "ok"


def _budget_in_one_window(client: httpx.Client, url: str, headers: dict) -> int:
    """Requests left in the current window after a probe; waits out a window about to end so
    that the counts that follow fall in one window."""
    probe = client.get(url, headers=headers)
    assert probe.status_code == 200
    if int(probe.headers["RateLimit-Reset"]) <= 5:
        time.sleep(int(probe.headers["RateLimit-Reset"]) + 1)
        return int(probe.headers["RateLimit-Limit"])
    return int(probe.headers["RateLimit-Remaining"])


@pytest.mark.redis
def test_limits_hold_across_two_processes_sharing_redis(provisioned):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: the PostgreSQL + Redis pass runs it")
    ports = free_port(), free_port()
    headers = {"X-API-Key": provisioned["E2E_KEY"]}
    with (
        running(gunicorn(ports[0]), provisioned, port=ports[0]) as a,
        running(gunicorn(ports[1]), provisioned, port=ports[1]) as b,
        httpx.Client() as client,
    ):
        budget = _budget_in_one_window(client, f"{b}/v1/tenant", headers)
        statuses = [
            client.get(f"{(a, b)[i % 2]}/v1/tenant", headers=headers).status_code
            for i in range(budget)
        ]
        assert statuses == [200] * budget
        # The next request, on either process, is over the tenant's 6/min.
        for base in (a, b):
            response = client.get(f"{base}/v1/tenant", headers=headers)
            assert response.status_code == 429
            assert response.headers["RateLimit-Remaining"] == "0"
            assert int(response.headers["Retry-After"]) > 0


@pytest.mark.redis
def test_the_ip_limit_holds_across_two_processes(provisioned):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: the PostgreSQL + Redis pass runs it")
    env = {**provisioned, "RATELIMIT_IP_RATE": "10/h"}  # an hour: no window edge mid-test
    ports = free_port(), free_port()
    with (
        running(gunicorn(ports[0]), env, port=ports[0]) as a,
        running(gunicorn(ports[1]), env, port=ports[1]) as b,
    ):
        seen = [httpx.get(f"{(a, b)[i % 2]}/v1/tenant").status_code for i in range(10)]
        assert seen == [401] * 10
        assert httpx.get(f"{a}/v1/tenant").status_code == 429
        assert httpx.get(f"{b}/v1/tenant").status_code == 429
