"""Stream delivery on the production configuration: one ``manage.py serve --no-worker`` (daphne)
on PostgreSQL + Redis.

    .venv/bin/python bench/streams.py [--events 50000] [--subscribers 10000] [--clients 4]

Measures, writing bench/results/streams.json with the machine it ran on:

1. **events/s to one client**: a stream of ``--events`` small token events is read from the
   start by one client over SSE (httpx, counting ``event:`` lines) and over WebSocket
   (websockets), from subscribe to the ``end`` event; and the same with the producer appending
   while the client reads (``live``). Medians of ``--repeats`` runs.
2. **concurrent subscribers**: ``--clients`` client processes (asyncio + websockets) open
   ``--subscribers`` authenticated WebSockets (API key header) in all, each subscribed to one
   shared stream; the daphne process's RSS is read from /proc before and after.
3. **fan-out**: one event appended to that stream; each client records when each of its
   sockets received it: the time until 5,000 subscribers had it and until all had it.

``ulimit -n`` is raised to the hard limit for this process and its children (each socket is a
file descriptor on both ends). The client processes share the machine with the server, so
the figures include their CPU use; on this shared 2-core machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auth_overhead import machine  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "streams.json"


def raise_nofile() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


# --- client process (``--client``) -------------------------------------------------------------


async def client_main(url: str, key: str, count: int, concurrency: int) -> None:
    """Open ``count`` subscribed sockets, say READY, then report when each got the event."""
    import websockets

    received: list[float] = []
    sockets: list[Any] = []
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def open_one() -> None:
        nonlocal failures
        async with gate:
            for _attempt in range(5):
                try:
                    ws = await websockets.connect(
                        url,
                        additional_headers={"X-API-Key": key},
                        open_timeout=120,
                        ping_interval=None,
                        max_queue=4,
                        compression=None,
                    )
                    ready = json.loads(await asyncio.wait_for(ws.recv(), 120))
                    if ready.get("type") != "ready":
                        raise RuntimeError(str(ready))
                    await ws.send(json.dumps({"type": "subscribe", "after": None}))
                    sockets.append(ws)
                    return
                except (OSError, TimeoutError, websockets.WebSocketException):
                    await asyncio.sleep(0.5)
            failures += 1

    await asyncio.gather(*(open_one() for _ in range(count)))
    print(f"READY {len(sockets)} {failures}", flush=True)

    async def wait_event(ws: Any) -> None:
        message = json.loads(await ws.recv())
        if message.get("type") == "event":
            received.append(time.time())

    await asyncio.wait_for(
        asyncio.gather(*(wait_event(ws) for ws in sockets), return_exceptions=True), 120
    )
    print("DONE " + json.dumps(received), flush=True)
    sys.stdin.readline()  # hold the sockets until the parent has measured


# --- the benchmark -----------------------------------------------------------------------------


class Server:
    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env, self.port = env, port
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import httpx

        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError("daphne did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def fill(log: Any, stream: str, n: int) -> None:
    """Append n token events (pipelined: the Lua append script in batches of 1,000)."""
    for start in range(0, n, 1000):
        pipe = log._redis.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            log._append(
                keys=log._keys(stream),
                args=["token", json.dumps({"i": i, "text": " tok"})],
                client=pipe,
            )
        pipe.execute()


def read_sse(base: str, key: str, stream: str) -> tuple[int, float]:
    import httpx

    count, started = 0, time.perf_counter()
    url = f"{base}/v1/streams/{stream}/events"
    with httpx.stream("GET", url, headers={"X-API-Key": key}, timeout=120) as response:
        tail = b""
        for chunk in response.iter_raw(65536):
            data = tail + chunk
            count += data.count(b"\nevent: token")
            if b"event: end" in data:
                break
            tail = data[-32:]
            count -= tail.count(b"\nevent: token")  # counted again with the next chunk
    return count, time.perf_counter() - started


async def read_ws(base: str, key: str, stream: str) -> tuple[int, float]:
    import websockets

    url = base.replace("http://", "ws://") + f"/ws/v1/streams/{stream}"
    count = 0
    async with websockets.connect(
        url, additional_headers={"X-API-Key": key}, compression=None, max_size=2**22
    ) as ws:
        await ws.recv()
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "subscribe", "after": None}))
        while True:
            message = await ws.recv()
            if '"event":"token"' in message:
                count += 1
            elif '"event":"end"' in message:
                break
    return count, time.perf_counter() - started


def throughput(server: Server, log: Any, key: str, tenant: int, args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {}
    for transport in ("sse", "ws"):
        for mode in ("replay", "live"):
            rates = []
            for _ in range(args.repeats):
                stream = f"bench-{uuid.uuid4().hex}"
                log.create(stream, tenant_id=tenant, kind="text", maxlen=args.events + 10)
                producer = None
                if mode == "replay":
                    fill(log, stream, args.events)
                    log.close(stream)
                else:

                    def produce(s: str = stream) -> None:
                        time.sleep(0.2)
                        fill(log, s, args.events)
                        log.close(s)

                    producer = threading.Thread(target=produce)
                    producer.start()
                if transport == "sse":
                    count, seconds = read_sse(server.base, key, stream)
                else:
                    count, seconds = asyncio.run(read_ws(server.base, key, stream))
                if producer is not None:
                    producer.join()
                if count != args.events:
                    raise RuntimeError(f"{transport} {mode}: {count} of {args.events} events")
                rates.append(round(count / seconds))
            out[f"{transport}_{mode}_events_per_s"] = statistics.median(rates)
            out[f"{transport}_{mode}_runs"] = rates
            print(transport, mode, rates, flush=True)
    return out


def subscribers(server: Server, log: Any, key: str, tenant: int, args: argparse.Namespace) -> dict:
    stream = f"fanout-{uuid.uuid4().hex}"
    log.create(stream, tenant_id=tenant, kind="metrics")
    url = server.base.replace("http://", "ws://") + f"/ws/v1/streams/{stream}"
    idle_rss = rss_mb(server.proc.pid)
    per = [args.subscribers // args.clients] * args.clients
    per[0] += args.subscribers - sum(per)
    started = time.monotonic()
    clients = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", url, key, str(n), str(args.ramp)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in per
    ]
    opened = failed = 0
    for proc in clients:
        line = proc.stdout.readline().split()  # type: ignore[union-attr]
        if not line or line[0] != "READY":
            raise RuntimeError(f"client failed: {line}")
        opened += int(line[1])
        failed += int(line[2])
    connect_seconds = time.monotonic() - started
    time.sleep(3)  # let the subscribes land and the server settle
    held_rss = rss_mb(server.proc.pid)
    print(f"{opened} subscribers ({failed} failed) in {connect_seconds:.0f}s; RSS {held_rss} MB")
    sent_at = time.time()
    log.append(stream, "metric", {"name": "fanout", "value": 1})
    times: list[float] = []
    for proc in clients:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("DONE "):
            raise RuntimeError(f"client failed: {line!r}")
        times.extend(json.loads(line[5:]))
    peak_rss = rss_mb(server.proc.pid)
    for proc in clients:
        proc.stdin.write("\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        proc.wait(timeout=120)
    delays = sorted(t - sent_at for t in times)
    return {
        "subscribers_requested": args.subscribers,
        "subscribers_held": opened,
        "connect_failures": failed,
        "client_processes": args.clients,
        "connect_seconds": round(connect_seconds, 1),
        "daphne_rss_idle_mb": idle_rss,
        "daphne_rss_with_subscribers_mb": held_rss,
        "daphne_rss_after_fanout_mb": peak_rss,
        "rss_per_subscriber_kb": round((held_rss - idle_rss) * 1024 / max(1, opened), 1),
        "fanout_received": len(delays),
        "fanout_seconds_to_5000": round(delays[4999], 3) if len(delays) >= 5000 else None,
        "fanout_seconds_to_all": round(delays[-1], 3) if delays else None,
        "fanout_seconds_p50": round(delays[len(delays) // 2], 3) if delays else None,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        raise_nofile()
        url, key, count, ramp = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        asyncio.run(client_main(url, key, count, ramp))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--ramp", type=int, default=100, help="handshakes in flight per client")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--database", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    nofile = raise_nofile()
    if nofile < args.subscribers + 1000:
        sys.exit(f"ulimit -n is {nofile}: raise the hard limit above {args.subscribers + 1000}")

    import psycopg
    import redis

    dbname = f"sluice_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    prefix = f"sluice-bench-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 40,
        SECURE_SSL_REDIRECT="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"{args.database.rsplit('/', 1)[0]}/{dbname}",
        REDIS_URL=args.redis,
        REDIS_KEY_PREFIX=prefix,
        LOG_LEVEL="WARNING",
        RATELIMIT_ENABLE="false",
    )
    os.environ.update(env)  # this process reads settings (the stream log) the same way
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from streaming.eventlog import RedisLog

    def manage(*a: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *a],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    server = None
    try:
        manage("migrate", "--no-input", "-v0")
        manage("createtenant", "Bench", "--streams", str(args.subscribers + 100))
        key = manage("createapikey", "--tenant", "bench", "--scopes", "streams")
        tenant = int(
            manage(
                "shell",
                "-c",
                "from tenants.models import Tenant;print(Tenant.objects.get(slug='bench').pk)",
            ).splitlines()[-1]
        )
        log = RedisLog(args.redis, prefix)
        server = Server(env, 19000 + os.getpid() % 1000)
        result: dict[str, Any] = {
            "machine": machine(),
            "conditions": (
                "one daphne process (manage.py serve --no-worker) on PostgreSQL + Redis; the "
                "client processes run on the same machine and share its CPU; the machine is "
                "shared with other work, so figures are noisy"
            ),
            "events": args.events,
        }
        if not args.skip_throughput:
            result["one_client"] = throughput(server, log, key, tenant, args)
        result["subscribers"] = subscribers(server, log, key, tenant, args)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if server is not None:
            server.stop()
        client = redis.Redis.from_url(args.redis)
        for k in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(k)
        with psycopg.connect(args.database, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    main()
