"""A client that reads slowly while a producer appends fast, against a real daphne
(``manage.py serve``) on Redis: the server's memory stays bounded (a reader holds a position in
the log, and deliveries wait while the socket's write buffer is full), and the reader gets a
``gap`` event when it catches up, then the rest of the stream."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets
from django.conf import settings

from streaming.eventlog import RedisLog
from testing.processes import free_port, manage, own_database, running_process, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.django_db]

EVENTS = 20_000
PAYLOAD = "x" * 4000  # 20,000 events of ~4 KB: ~80 MB through a stream that keeps 300
BOUND_MB = 40  # growth of the server's RSS allowed while the client lags


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture
def server(tmp_path):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL: the test produces into the server's Redis stream log")
    with own_database(tmp_path) as url:
        env = server_env(url)
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "Owner")
        key = manage(env, "createapikey", "--tenant", "owner", "--scopes", "streams")
        tenant_id = int(
            manage(
                env,
                "shell",
                "-c",
                "from tenants.models import Tenant;print(Tenant.objects.get(slug='owner').pk)",
            ).splitlines()[-1]
        )
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)]
        with running_process(cmd, env, port=port) as (base, proc):
            yield {
                "base": base,
                "pid": proc.pid,
                "key": key,
                "tenant_id": tenant_id,
                "log": RedisLog(settings.REDIS_URL, env["REDIS_KEY_PREFIX"]),
            }


class Producer:
    """Appends EVENTS big events as fast as it can, then ends the stream; samples the server's
    RSS meanwhile."""

    def __init__(self, server: dict, stream: str) -> None:
        self.server, self.stream = server, stream
        self.done = threading.Event()
        self.peak = 0.0
        self.baseline = rss_mb(server["pid"])

    def start(self) -> None:
        threading.Thread(target=self._produce, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _produce(self) -> None:
        log = self.server["log"]
        for i in range(EVENTS):
            log.append(self.stream, "token", {"i": i, "pad": PAYLOAD})
        log.close(self.stream)
        self.done.set()

    def _sample(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss_mb(self.server["pid"]))
            time.sleep(0.05)
        self.peak = max(self.peak, rss_mb(self.server["pid"]))


def _check(seen: list[tuple[str, dict]], producer: Producer) -> None:
    kinds = [kind for kind, _ in seen]
    assert "gap" in kinds, "a reader that fell behind the trim must be told"
    assert kinds[-1] == "end"
    numbers = [data["i"] for kind, data in seen if kind == "token"]
    assert numbers == sorted(set(numbers)), "out of order or duplicated"
    gap = kinds.index("gap")
    after = [data["i"] for kind, data in seen[gap + 1 :] if kind == "token"]
    assert after and after[-1] == EVENTS - 1, "the reader resumes after the gap"
    growth = producer.peak - producer.baseline
    assert growth < BOUND_MB, f"server RSS grew {growth:.0f} MB while the client lagged"


def test_a_slow_websocket_reader_costs_bounded_memory_and_gets_a_gap(server):
    log, sid = server["log"], f"s-{uuid.uuid4().hex}"
    log.create(sid, tenant_id=server["tenant_id"], kind="text", maxlen=300)
    url = server["base"].replace("http://", "ws://") + f"/ws/v1/streams/{sid}"

    async def run() -> tuple[list, Producer]:
        seen: list[tuple[str, dict]] = []
        async with websockets.connect(url, additional_headers={"X-API-Key": server["key"]}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "subscribe", "after": None}))
            producer = Producer(server, sid)
            producer.start()
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 60))
                seen.append((message["event"], message["data"]))
                if message["event"] == "end":
                    break
                if not producer.done.is_set():
                    await asyncio.sleep(0.02)  # slow until the producer is done
        return seen, producer

    seen, producer = asyncio.run(run())
    _check(seen, producer)


def test_a_slow_sse_reader_costs_bounded_memory_and_gets_a_gap(server):
    log, sid = server["log"], f"s-{uuid.uuid4().hex}"
    log.create(sid, tenant_id=server["tenant_id"], kind="text", maxlen=300)
    seen: list[tuple[str, dict]] = []
    url = f"{server['base']}/v1/streams/{sid}/events"
    with httpx.stream("GET", url, headers={"X-API-Key": server["key"]}, timeout=60) as response:
        assert response.status_code == 200
        producer = Producer(server, sid)
        producer.start()
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind:
                seen.append((kind, json.loads(line.removeprefix("data: "))))
                if kind == "end":
                    break
                if not producer.done.is_set():
                    time.sleep(0.02)
    _check(seen, producer)
