"""Streaming inference end to end: a real daphne (``manage.py serve --no-worker``) and a real
``celery worker`` process on PostgreSQL + Redis, driven by real clients (httpx streaming,
websockets). The worker appends events as it generates; disconnecting or ``cancel`` stops it
within 250 ms (measured from the worker's own ``stopped_at`` in the ``end`` event)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from django.conf import settings

from streaming.eventlog import RedisLog
from testing.processes import (
    celery_worker,
    free_port,
    manage,
    own_database,
    running,
    server_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db]
pytest.importorskip("torch")
pytest.importorskip("transformers")

from testing.tinylm import build_gpt2, zipped  # noqa: E402

CANCEL_BUDGET_S = 0.25
LM_SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string"},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
    "required": ["prompt"],
}


@pytest.fixture(scope="module")
def lm_artifact(tmp_path_factory) -> Path:
    """A small GPT-2 with no end-of-text token: it streams until max_tokens. Sixteen layers make
    1,000 tokens take seconds, so the stream is still running when a client that lags on a
    loaded machine disconnects or cancels (two layers finished before the cancel once)."""
    directory = tmp_path_factory.mktemp("lm")
    path = directory / "lm.zip"
    model = build_gpt2(directory / "model", eos=False, n_positions=1024, n_layer=16)
    path.write_bytes(zipped(model))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, lm_artifact):
    """One web process and one worker for the module (starting them is the slow part)."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: web and worker share the Redis stream log")
    tmp_path = tmp_path_factory.mktemp("stack")
    with own_database(tmp_path) as url:
        env = server_env(url, RATELIMIT_IP_RATE="10000/h", MEDIA_ROOT=str(tmp_path / "media"))
        if not url.startswith("postgres"):
            pytest.skip("the worker process needs a database it can share (PostgreSQL)")
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "Owner")
        key = manage(env, "createapikey", "--tenant", "owner", "--scopes", "infer,streams")
        schema = tmp_path / "schema.json"
        schema.write_text(json.dumps(LM_SCHEMA))
        manage(
            env,
            "registermodel",
            "lm",
            "1",
            "--runtime",
            "transformers",
            "--artifact",
            str(lm_artifact),
            "--task",
            "text",
            "--input-schema",
            f"@{schema}",
            "--activate",
        )
        manage(
            env,
            "shell",
            "-c",
            "from inference.registry.builtin import sentiment_install; sentiment_install()",
        )
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)]
        worker = celery_worker(env, queues="celery,cpu", pool="threads", concurrency=4)
        with worker, running(cmd, env, port=port, timeout=60) as base:
            yield {
                "base": base,
                "key": key,
                "log": RedisLog(settings.REDIS_URL, env["REDIS_KEY_PREFIX"]),
            }


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str, dict]]:
    """(id, event, data) of each SSE event as it arrives."""
    block: dict[str, str] = {}
    for line in lines:
        if not line:
            if "event" in block:
                yield block.get("id", ""), block["event"], json.loads(block["data"])
            block = {}
            continue
        match = re.match(r"^(id|event|data): (.*)$", line)
        if match:
            block[match[1]] = match[2]


def _end_event(stream_log: RedisLog, stream_id: str, timeout: float = 10) -> dict:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        events = stream_log.read(stream_id, count=5000)
        if events and events[-1].event == "end":
            return {"end": events[-1].data, "tokens": sum(e.event == "token" for e in events)}
        time.sleep(0.01)
    raise AssertionError(f"stream {stream_id} did not end")


def test_tokens_arrive_while_the_worker_is_still_generating(stack) -> None:
    url = f"{stack['base']}/v1/models/lm/infer?stream=true"
    body = {"input": {"prompt": "Hello", "max_tokens": 300}, "timeout_ms": 60000}
    headers = {"X-API-Key": stack["key"]}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream_id = response.headers["x-sluice-stream"]
        events = []
        first_seen_ms = None
        for event in _sse(response.iter_lines()):
            if first_seen_ms is None and event[1] == "token":
                first_seen_ms = time.time() * 1000
            events.append(event)
    names = [e for _, e, _ in events]
    assert names[-2:] == ["result", "end"], events[-3:]
    assert names.count("token") > 10
    tokens = [d["text"] for _, e, d in events if e == "token"]
    assert "".join(tokens) == events[-2][2]["output"]["text"]
    assert events[-2][2]["output"]["completion_tokens"] == 300
    last_token_ms = int([i for i, e, _ in events if e == "token"][-1].split("-")[0])
    # The first token was on this client before the worker appended the last one.
    assert first_seen_ms is not None and first_seen_ms < last_token_ms
    assert stack["log"].meta(stream_id).kind == "text"


def test_a_client_that_disconnects_stops_the_worker_within_250_ms(stack) -> None:
    url = f"{stack['base']}/v1/models/lm/infer?stream=true"
    body = {"input": {"prompt": "Hello", "max_tokens": 1000}, "timeout_ms": 60000}
    with httpx.stream(
        "POST", url, json=body, headers={"X-API-Key": stack["key"]}, timeout=60
    ) as response:
        stream_id = response.headers["x-sluice-stream"]
        seen = 0
        for _, event, _ in _sse(response.iter_lines()):
            seen += event == "token"
            if seen == 5:
                break
        gone_at = time.time()
    # leaving the block closed the connection
    ended = _end_event(stack["log"], stream_id)
    assert ended["end"]["reason"] == "cancelled"
    assert ended["tokens"] < 1000
    latency = ended["end"]["stopped_at"] - gone_at
    print(f"SSE disconnect -> worker stopped: {latency * 1000:.1f} ms")
    assert latency < CANCEL_BUDGET_S


def test_a_websocket_cancel_stops_the_worker_within_250_ms(stack) -> None:
    ws_url = stack["base"].replace("http://", "ws://") + "/ws/v1/models/lm/infer"

    async def run() -> tuple[float, dict, int]:
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": stack["key"]}))
            assert json.loads(await ws.recv()) == {"type": "ready", "model": "lm"}
            await ws.send(
                json.dumps(
                    {
                        "type": "infer",
                        "input": {"prompt": "Hi", "max_tokens": 1000},
                        "timeout_ms": 60000,
                    }
                )
            )
            assert json.loads(await ws.recv())["type"] == "started"
            tokens = 0
            cancelled_at = 0.0
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if message["type"] != "event":
                    continue
                if message["event"] == "token":
                    tokens += 1
                    if tokens == 5:
                        cancelled_at = time.time()
                        await ws.send(json.dumps({"type": "cancel"}))
                if message["event"] == "end":
                    return cancelled_at, message["data"], tokens

    cancelled_at, end, tokens = asyncio.run(run())
    assert end["reason"] == "cancelled" and tokens < 1000
    latency = end["stopped_at"] - cancelled_at
    print(f"WebSocket cancel -> worker stopped: {latency * 1000:.1f} ms")
    assert latency < CANCEL_BUDGET_S


def test_an_analysis_streams_a_result_per_item(stack) -> None:
    texts = ["I love this", "I hate this", "It is a table", "Wonderful!"]
    with httpx.stream(
        "POST",
        f"{stack['base']}/v1/models/sentiment/infer?stream=true",
        json={"inputs": [{"text": t} for t in texts]},
        headers={"X-API-Key": stack["key"]},
        timeout=60,
    ) as response:
        assert response.headers["x-sluice-stream-kind"] == "analysis"
        events = list(_sse(response.iter_lines()))
    results = [d for _, e, d in events if e == "result"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    labels = [r["output"]["label"] for r in results]
    assert labels == ["positive", "negative", "neutral", "positive"]
    assert events[-1][1] == "end" and events[-1][2]["reason"] == "done"
