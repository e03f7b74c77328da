"""SSE through a real daphne process with a real client, resuming after a forced disconnect."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from django.conf import settings

from streaming.log import RedisLog
from testing.processes import BIN, free_port, manage, own_database, running, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db]


@pytest.fixture
def daphne(tmp_path):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: the test produces into the server's Redis stream log")
    with own_database(tmp_path) as url:
        env = server_env(url)
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "Owner")
        manage(env, "createtenant", "Other")
        owner = manage(env, "createapikey", "--tenant", "owner", "--scopes", "streams")
        other = manage(env, "createapikey", "--tenant", "other", "--scopes", "streams")
        tenant_id = int(
            manage(
                env,
                "shell",
                "-c",
                "from tenants.models import Tenant;print(Tenant.objects.get(slug='owner').pk)",
            ).splitlines()[-1]  # the shell prints a banner first
        )
        port = free_port()
        cmd = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
        with running(cmd, env, port=port) as base:
            yield {
                "base": base,
                "owner": owner,
                "other": other,
                "tenant_id": tenant_id,
                "log": RedisLog(settings.REDIS_URL, env["REDIS_KEY_PREFIX"]),
            }


def _read_events(response: httpx.Response, n: int) -> list[tuple[str, str]]:
    """The first n (id, event) pairs of an open SSE response."""
    got: list[tuple[str, str]] = []
    block: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "event" in block:
                got.append((block.get("id", ""), block["event"]))
            block = {}
            if len(got) == n:
                return got
            continue
        match = re.match(r"^(id|event|data): (.*)$", line)
        if match:
            block[match[1]] = match[2]
    return got


def test_a_client_resumes_after_a_forced_disconnect_with_no_gap_and_no_duplicate(daphne):
    log, sid = daphne["log"], f"s-{uuid.uuid4().hex}"
    log.create(sid, tenant_id=daphne["tenant_id"], kind="text")
    sent = [log.append(sid, "token", {"i": i}) for i in range(3)]
    url = f"{daphne['base']}/v1/streams/{sid}/events"
    headers = {"X-API-Key": daphne["owner"]}
    with httpx.stream("GET", url, headers=headers, timeout=10) as first:
        assert first.status_code == 200
        seen = _read_events(first, 2)
    # The connection is gone; the producer goes on.
    sent += [log.append(sid, "token", {"i": i}) for i in range(3, 6)]
    log.close(sid)
    with httpx.stream(
        "GET", url, headers={**headers, "Last-Event-ID": seen[-1][0]}, timeout=10
    ) as second:
        seen += _read_events(second, 5)
    ids = [i for i, e in seen if e == "token"]
    assert ids == sent
    assert seen[-1][1] == "end"


def test_another_tenant_cannot_subscribe(daphne):
    log, sid = daphne["log"], f"s-{uuid.uuid4().hex}"
    log.create(sid, tenant_id=daphne["tenant_id"], kind="text")
    response = httpx.get(
        f"{daphne['base']}/v1/streams/{sid}/events",
        headers={"X-API-Key": daphne["other"]},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
