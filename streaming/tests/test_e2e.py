"""SSE and WebSocket through a real daphne process with real clients (httpx, websockets)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
import uuid

import httpx
import pytest
import websockets
from django.conf import settings

from streaming.eventlog import RedisLog
from testing.processes import free_port, manage, own_database, running, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db]


@pytest.fixture
def daphne(tmp_path):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: the test produces into the server's Redis stream log")
    with own_database(tmp_path) as url:
        # Revocation reaches an open stream within the key cache time plus the re-check time.
        env = server_env(url, WS_REAUTH_SECONDS="1", API_KEY_CACHE_SECONDS="1")
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
        cmd = [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)]
        with running(cmd, env, port=port) as base:
            yield {
                "base": base,
                "owner": owner,
                "other": other,
                "tenant_id": tenant_id,
                "log": RedisLog(settings.REDIS_URL, env["REDIS_KEY_PREFIX"]),
                "env": env,
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


def _ws_url(daphne: dict, sid: str) -> str:
    return daphne["base"].replace("http://", "ws://") + f"/ws/v1/streams/{sid}"


async def _events(ws, n: int) -> list[dict]:
    got = []
    while len(got) < n:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message["type"] == "event":
            got.append(message)
    return got


def test_a_websocket_client_resumes_after_a_forced_disconnect(daphne):
    log, sid = daphne["log"], f"s-{uuid.uuid4().hex}"
    log.create(sid, tenant_id=daphne["tenant_id"], kind="text")
    sent = [log.append(sid, "token", {"i": i}) for i in range(3)]

    async def run() -> list[dict]:
        async with websockets.connect(_ws_url(daphne, sid)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": daphne["owner"]}))
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "subscribe", "after": None}))
            first = await _events(ws, 2)
        # dropped mid-stream; the producer goes on
        sent.extend(log.append(sid, "token", {"i": i}) for i in range(3, 5))
        log.close(sid)
        async with websockets.connect(
            _ws_url(daphne, sid), additional_headers={"X-API-Key": daphne["owner"]}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "subscribe", "after": first[-1]["id"]}))
            rest = await _events(ws, 4)
            with pytest.raises(websockets.ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 10)
        return first + rest

    seen = asyncio.run(run())
    assert [m["id"] for m in seen if m["event"] == "token"] == sent
    assert seen[-1]["event"] == "end"


def test_websocket_refusals_use_the_documented_close_codes(daphne):
    log, sid = daphne["log"], f"s-{uuid.uuid4().hex}"
    log.create(sid, tenant_id=daphne["tenant_id"], kind="text")

    async def close_code(key: str, frames: list[str]) -> int:
        async with websockets.connect(
            _ws_url(daphne, sid), additional_headers={"X-API-Key": key}
        ) as ws:
            try:
                for frame in frames:
                    await ws.send(frame)
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else -1

    async def run() -> None:
        assert await close_code(daphne["other"], []) == 4404  # another tenant's stream
        big = json.dumps({"type": "subscribe", "pad": "x" * 70_000})
        assert await close_code(daphne["owner"], [big]) == 1009
        garbage = ["{nope", "[]", '{"type": "dance"}']
        assert await close_code(daphne["owner"], garbage) == 4400

    asyncio.run(run())


def test_garbage_gets_an_error_event_and_the_socket_survives(daphne):
    log, sid = daphne["log"], f"s-{uuid.uuid4().hex}"
    log.create(sid, tenant_id=daphne["tenant_id"], kind="text")

    async def run() -> None:
        async with websockets.connect(
            _ws_url(daphne, sid), additional_headers={"X-API-Key": daphne["owner"]}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(b"\x00\xff binary garbage")
            assert json.loads(await ws.recv())["code"] == "bad_message"
            await ws.send(json.dumps({"type": "cancel"}))
            assert json.loads(await ws.recv()) == {"type": "cancelling"}

    asyncio.run(run())
    assert log.is_cancelled(sid)


def test_a_revoked_keys_streams_are_closed_promptly(daphne):
    log, sid = daphne["log"], f"s-{uuid.uuid4().hex}"
    log.create(sid, tenant_id=daphne["tenant_id"], kind="text")
    raw = manage(daphne["env"], "createapikey", "--tenant", "owner", "--scopes", "streams")
    prefix = raw.removeprefix("sk_live_").split(".")[0]
    sse_end: dict[str, float | str] = {}

    def follow_sse() -> None:
        url = f"{daphne['base']}/v1/streams/{sid}/events"
        with httpx.stream("GET", url, headers={"X-API-Key": raw}, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and "unauthenticated" in line:
                    sse_end.update(at=time.monotonic(), line=line)
                    return

    async def run() -> tuple[int, float, float]:
        async with websockets.connect(
            _ws_url(daphne, sid), additional_headers={"X-API-Key": raw}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "subscribe", "after": None}))
            sse = threading.Thread(target=follow_sse)
            sse.start()
            await asyncio.sleep(1)
            await asyncio.to_thread(
                manage,
                daphne["env"],
                "shell",
                "-c",
                "from tenants.models import TenantAPIKey as K;from tenants.services import "
                f"apikey_revoke;apikey_revoke(key=K.objects.get(prefix='{prefix}'))",
            )
            revoked = time.monotonic()
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else -1
            elapsed = time.monotonic() - revoked
            await asyncio.to_thread(sse.join, 15)
            return code, elapsed, revoked

    code, elapsed, revoked = asyncio.run(run())
    assert code == 4401
    assert elapsed < 5, f"the WebSocket closed {elapsed:.1f}s after the revocation"
    assert sse_end, "the SSE stream did not end"
    assert float(sse_end["at"]) - revoked < 5
