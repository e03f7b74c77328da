"""A streaming answer lives as long as its client and its key, on every server that serves
it — gunicorn (WSGI), daphne (``manage.py serve --no-worker``) and the unary server (uvicorn,
``config.unary``) — with a real ``celery worker`` on PostgreSQL + Redis.

A client that closes the answer cancels the work, for every stream shape:

- tokens: ``?stream=true`` on a text model that types a token every 20 ms;
- analysis: a 1,024-input ``?stream=true`` of a model computing a batch of 8 every 50 ms;
- media: faces in each frame of a 600-frame video (``POST /v1/media/video``), seconds of work.

Each is read for a while and then the connection is closed (and, for the analysis, also
closed right after the request is sent, before any answer). The worker must stop within
250 ms of the close — the ``end`` event's id is the log's clock when it was appended — and so
append no more than it computes in that time.

A key revoked while its token stream is open ends the answer (an ``error`` event) within
``API_KEY_CACHE_SECONDS`` + ``WS_REAUTH_SECONDS``, and the work stops.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from django.conf import settings

from streaming.eventlog import RedisLog
from testing.processes import (
    celery_worker,
    free_port,
    gunicorn,
    manage,
    own_database,
    running,
    server_env,
    uvicorn,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db, pytest.mark.timeout(600)]

CANCEL_BUDGET_S = 0.25
CACHE_S, REAUTH_S = 1, 1  # a revocation is seen within both
SLACK_S = 1.5  # scheduling on a loaded two-core machine
SERVERS = ("gunicorn", "daphne", "uvicorn")
TRIES = 3
ITEMS, BATCH, BATCH_SECONDS = 1024, 8, 0.05
TOKEN_SECONDS = 0.02
FRAMES = 600
REGISTER = (
    "from inference.models import Model\n"
    "from inference.tests.conftest import make_version\n"
    "from inference.tests.fakes import DOUBLER, TYPIST\n"
    f"make_version('slow', options={{**DOUBLER, 'sleep': {BATCH_SECONDS}}}, "
    f"max_batch_size={BATCH})\n"
    f"make_version('typist', options={{**TYPIST, 'sleep': {TOKEN_SECONDS}}}, "
    "task=Model.Task.TEXT)\n"
    "from inference.registry.builtin import faces_install\n"
    "faces_install()\n"
)


def _video(path: Path) -> bytes:
    """FRAMES plain 320x240 frames of MPEG-4: seconds of work for the faces model."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 240))
    for index in range(FRAMES):
        writer.write(np.full((240, 320, 3), 100 + index % 50, dtype=np.uint8))
    writer.release()
    return path.read_bytes()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """gunicorn, daphne and uvicorn on one database and Redis prefix, and one worker."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: the servers and the worker share the Redis stream log")
    pytest.importorskip("cv2")
    tmp_path = tmp_path_factory.mktemp("cancel")
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
        manage(env, "createtenant", "Owner", "--streams", "100")
        key = manage(env, "createapikey", "--tenant", "owner", "--scopes", "infer,streams")
        manage(env, "shell", "-c", REGISTER)
        with contextlib.ExitStack() as processes:
            processes.enter_context(
                celery_worker(env, queues="celery,cpu", pool="threads", concurrency=8)
            )
            bases = {}
            port = free_port()
            bases["gunicorn"] = processes.enter_context(
                running(gunicorn(port, threads=8), env, port=port)
            )
            port = free_port()
            serve = [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)]
            bases["daphne"] = processes.enter_context(running(serve, env, port=port))
            port = free_port()
            bases["uvicorn"] = processes.enter_context(running(uvicorn(port), env, port=port))
            prefix = env["REDIS_KEY_PREFIX"]
            yield {
                "bases": bases,
                "env": env,
                "db": url,
                "key": key,
                "log": RedisLog(settings.REDIS_URL, prefix),
                "streams": lambda: _streams(prefix),
                "video": _video(tmp_path / "long.mp4"),
            }


def _streams(prefix: str) -> set[str]:
    """The ids of the streaming inferences in the log (``<prefix>:stream:{<id>}``)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = client.scan_iter(match=f"{prefix}:stream:{{inf-*}}", count=1000)
        return {key.decode().split("{", 1)[1].rstrip("}") for key in keys}
    finally:
        client.close()


def _ms(event_id: str) -> int:
    return int(event_id.split("-")[0])


# What each shape posts, and which events are its work.
SHAPES: dict[str, dict[str, Any]] = {
    "tokens": {
        "path": "/v1/models/typist/infer?stream=true",
        "json": {"input": {"x": 1000}, "timeout_ms": 60000},
        "event": "token",
        "read": 10,
        "late_max": round(CANCEL_BUDGET_S / TOKEN_SECONDS),
    },
    "analysis": {
        "path": "/v1/models/slow/infer?stream=true",
        "json": {"inputs": [{"x": i % 1000} for i in range(ITEMS)], "timeout_ms": 60000},
        "event": "result",
        "read": 16,
        "late_max": round(CANCEL_BUDGET_S / BATCH_SECONDS) * BATCH,
    },
    "media": {
        "path": "/v1/media/video",
        "event": "result",  # one per frame
        "read": 5,
        "late_max": None,  # frames take what decoding and detection take: the time is checked
    },
}


def _close_midway(stack: dict[str, Any], server: str, shape: dict[str, Any]) -> tuple[str, float]:
    """Start the stream, read ``shape["read"]`` of its events, close the connection: (stream,
    when it closed)."""
    kwargs: dict[str, Any] = {"json": shape["json"]} if "json" in shape else {}
    if "json" not in shape:
        kwargs = {"content": stack["video"], "headers": {"Content-Type": "video/mp4"}}
    headers = {"X-API-Key": stack["key"], **kwargs.pop("headers", {})}
    seen = 0
    with httpx.stream(
        "POST",
        stack["bases"][server] + shape["path"],
        headers=headers,
        timeout=60,
        **kwargs,
    ) as response:
        assert response.status_code == 200, response.read()
        stream_id = response.headers.get("x-sluice-stream") or response.headers["x-stream-id"]
        for line in response.iter_lines():
            seen += line == f"event: {shape['event']}"
            if seen >= shape["read"]:
                break
    return stream_id, time.time()  # leaving the block closed the connection


def _close_at_once(stack: dict[str, Any], server: str) -> tuple[str, float]:
    """Send an analysis request and close the connection without reading: the view is still
    starting the stream (or has just started it) when the client is gone."""
    before = stack["streams"]()
    body = json.dumps(SHAPES["analysis"]["json"]).encode()
    host, port = stack["bases"][server].removeprefix("http://").split(":")
    head = (
        f"POST {SHAPES['analysis']['path']} HTTP/1.1\r\nHost: {host}\r\n"
        f"X-API-Key: {stack['key']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + body)
        time.sleep(0.02)
    closed_at = time.time()
    give_up = time.monotonic() + 10
    while not (started := stack["streams"]() - before):
        assert time.monotonic() < give_up, "the request started no stream"
        time.sleep(0.05)
    (stream_id,) = started
    return stream_id, closed_at


def _outcome(stack: dict[str, Any], stream_id: str, closed_at: float, event: str) -> dict:
    """How the stream ended, how long after the close, and how much work came after it."""
    give_up = time.monotonic() + 90
    while time.monotonic() < give_up:
        events = stack["log"].read(stream_id, count=5000)
        if events and events[-1].event == "end":
            late = [e for e in events if e.event == event and _ms(e.id) > closed_at * 1000]
            return {
                "reason": events[-1].data.get("reason"),
                "late": len(late),
                "cancel_ms": round(_ms(events[-1].id) - closed_at * 1000),
            }
        time.sleep(0.02)
    raise AssertionError(f"stream {stream_id} did not end")


def _check(outcomes: list[dict], late_max: int | None) -> None:
    assert all(o["reason"] == "cancelled" for o in outcomes), outcomes
    assert all(o["cancel_ms"] < CANCEL_BUDGET_S * 1000 for o in outcomes), outcomes
    if late_max is not None:
        assert all(o["late"] <= late_max for o in outcomes), outcomes


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_closing_a_stream_midway_cancels_the_work_within_250_ms(stack, server, shape) -> None:
    spec = SHAPES[shape]
    outcomes = []
    for _ in range(TRIES):
        stream_id, closed_at = _close_midway(stack, server, spec)
        outcomes.append(_outcome(stack, stream_id, closed_at, spec["event"]))
    print(f"{server} {shape} midway: {json.dumps(outcomes)}")
    _check(outcomes, spec["late_max"])


@pytest.mark.parametrize("server", SERVERS)
def test_closing_before_the_answer_cancels_the_work_within_250_ms(stack, server) -> None:
    outcomes = []
    for _ in range(TRIES):
        stream_id, closed_at = _close_at_once(stack, server)
        outcomes.append(_outcome(stack, stream_id, closed_at, "result"))
    print(f"{server} analysis closed at once: {json.dumps(outcomes)}")
    _check(outcomes, SHAPES["analysis"]["late_max"])


@pytest.mark.parametrize("server", SERVERS)
def test_a_revoked_keys_token_stream_ends_and_its_work_stops(stack, server) -> None:
    """The answer is bound to its key: revoked in the database (as the admin or another
    process would), it ends with an ``error`` event within the key cache time plus a
    re-check, and the worker stops."""
    key = manage(stack["env"], "createapikey", "--tenant", "owner", "--scopes", "infer")
    prefix = key.removeprefix("sk_live_").split(".")[0]
    tokens_after = 0
    with httpx.stream(
        "POST",
        stack["bases"][server] + SHAPES["tokens"]["path"],
        json=SHAPES["tokens"]["json"],
        headers={"X-API-Key": key},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        stream_id = response.headers["x-sluice-stream"]
        lines = response.iter_lines()
        for line in lines:
            if line == "event: token":
                break
        with psycopg.connect(stack["db"], autocommit=True) as conn:
            conn.execute(
                "UPDATE tenants_tenantapikey SET revoked = true WHERE prefix = %s", [prefix]
            )
        revoked = time.monotonic()
        last = ""
        for line in lines:
            tokens_after += line == "event: token"
            last = line or last
        ended = time.monotonic() - revoked
    print(f"{server} revoked: ended after {ended:.2f} s, {tokens_after} tokens after")
    assert last == 'data: {"code":"unauthenticated"}'
    assert ended < CACHE_S + REAUTH_S + SLACK_S
    end = _outcome(stack, stream_id, time.time(), "token")
    assert end["reason"] == "cancelled"
