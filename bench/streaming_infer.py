"""Streaming inference through the whole stack: time to first event (TTFE) added by the
platform over calling the engine in-process, and cancel → worker-stopped latency, on the
production configuration (PostgreSQL + Redis, a ``celery worker`` with the thread pool) with
the built-in token-streaming model ``textgen``, served both ways a deployment can: by gunicorn
(the route deploy/nginx/sluice.conf gives ``POST /v1/models/{name}/infer?stream=true``) and by
daphne (``manage.py serve --no-worker``, the quick start's single process and the WebSocket
endpoints).

    .venv/bin/python bench/streaming_infer.py [--samples 50] [--cancels 20]

Method: the server-side processes we start (gunicorn, daphne, the Celery worker) are pinned to CPU 0
with taskset and this client to CPU 1 (when there are two CPUs and taskset exists); Redis and
PostgreSQL are the machine's own servers and are not re-pinned.

- Engine in-process: the same runtime class the worker uses, loaded in this process from the
  same artifact; time from calling ``runtime.stream(item)`` to its first chunk.
- Through the stack: ``POST /v1/models/textgen/infer?stream=true`` over a kept-alive HTTP
  connection (httpx), time from sending the request to the first ``token`` event parsed off the
  SSE stream. Platform overhead = stack p50 - engine p50 (and the same for p90).
  Measured on gunicorn (``platform_added_ttfe_ms``, the production route) and on daphne
  (``daphne_platform_added_ttfe_ms``).
- Cancel (daphne): a WebSocket client sends ``cancel`` after the third token; latency = the worker's
  ``stopped_at`` (in the ``end`` event; the worker's clock, which is this machine's) minus the
  moment the client sent ``cancel``; also until the client received ``end``. An SSE client
  that disconnects after the third token: disconnect → ``stopped_at`` (read from the stream
  log). Streams that ended by themselves before the cancel are not counted.

Each figure is over ``--samples`` / ``--cancels`` sequential requests after 5 warm-up ones.
Writes bench/results/streaming-infer.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auth_overhead import machine  # noqa: E402
from testing.processes import gunicorn  # noqa: E402

ITEM = {"prompt": "And God said", "max_tokens": 8}


def pct(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p90_ms": at(0.9),
        "p99_ms": at(0.99),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
    }


def manage(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode:
        raise RuntimeError(f"manage.py {args[0]}: {out.stderr[-2000:]}")
    return out.stdout.strip()


def pinned(cmd: list[str], cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


def engine_ttfe(samples: int) -> dict[str, float]:
    """First chunk of ``runtime.stream`` in this process (the engine alone)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    from inference.registry.builtin import TEXTGEN_OPTIONS
    from inference.registry.textgen import ARTIFACT
    from inference.runtimes import VersionSpec
    from inference.runtimes.onnx_textgen import OnnxTextgenRuntime

    runtime = OnnxTextgenRuntime(
        VersionSpec(
            id=0, model="textgen", version="0", runtime="onnx-textgen", options=TEXTGEN_OPTIONS
        )
    )
    runtime.load(ARTIFACT.read_bytes())
    runtime.warmup()
    times = []
    for n in range(samples + 5):
        started = time.perf_counter()
        stream = runtime.stream(ITEM)
        next(stream)
        elapsed = (time.perf_counter() - started) * 1000
        stream.close()
        if n >= 5:
            times.append(elapsed)
    runtime.close()
    return pct(times)


def stack_ttfe(base: str, key: str, samples: int) -> dict[str, Any]:
    """First token through the stack, split by the first token's stream id (the Redis clock
    when the worker appended it, this machine's clock): request → appended (web path, queue,
    worker, engine) and appended → on the client (the SSE reader's wake-up and the write)."""
    import httpx

    first_token: list[float] = []
    headers_at: list[float] = []
    appended: list[float] = []
    delivered: list[float] = []
    # TCP_NODELAY, as wrk and browsers set it: httpx writes the request's headers and body
    # separately, and with Nagle on the body waits for the server's delayed ACK (40 ms here).
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(
        base_url=base, headers={"X-API-Key": key}, timeout=60, transport=transport
    ) as client:
        for n in range(samples + 5):
            sent_wall = time.time()
            started = time.perf_counter()
            with client.stream(
                "POST",
                "/v1/models/textgen/infer?stream=true",
                json={"input": ITEM, "timeout_ms": 60000},
            ) as response:
                assert response.status_code == 200, response.read()
                got_headers = time.perf_counter()
                token_at = token_wall = None
                last_id = token_id = ""
                for line in response.iter_lines():
                    if line.startswith("id: "):
                        last_id = line[4:]
                    if token_at is None and line == "event: token":
                        token_at, token_wall, token_id = time.perf_counter(), time.time(), last_id
                    if line == "event: end":
                        break
            if n >= 5 and token_at is not None and token_wall is not None:
                first_token.append((token_at - started) * 1000)
                headers_at.append((got_headers - started) * 1000)
                appended_ms = int(token_id.split("-")[0])
                appended.append(appended_ms - sent_wall * 1000)
                delivered.append(token_wall * 1000 - appended_ms)
    return {
        "first_token": pct(first_token),
        "response_headers": pct(headers_at),
        "request_to_worker_appended_first_token": pct(appended),
        "appended_to_client_received": pct(delivered),
    }


async def ws_cancels(base: str, key: str, trials: int) -> dict[str, Any]:
    import websockets

    to_stop: list[float] = []
    to_end: list[float] = []
    ended_early = 0
    url = base.replace("http://", "ws://") + "/ws/v1/models/textgen/infer"
    async with websockets.connect(url, additional_headers={"X-API-Key": key}) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        for _ in range(trials):
            await ws.send(
                json.dumps(
                    {
                        "type": "infer",
                        "input": {"prompt": "And God said", "max_tokens": 250},
                        "timeout_ms": 60000,
                    }
                )
            )
            tokens, sent_at = 0, 0.0
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if message["type"] != "event":
                    continue
                if message["event"] == "token":
                    tokens += 1
                    if tokens == 3:
                        sent_at = time.time()
                        await ws.send(json.dumps({"type": "cancel"}))
                elif message["event"] == "end":
                    received = time.time()
                    if message["data"].get("reason") == "cancelled" and sent_at:
                        to_stop.append((message["data"]["stopped_at"] - sent_at) * 1000)
                        to_end.append((received - sent_at) * 1000)
                    else:
                        ended_early += 1
                    break
            # the "cancelling" acknowledgement may arrive after end; drain it
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 0.05)
            except TimeoutError:
                pass
    return {
        "cancel_to_worker_stopped": pct(to_stop),
        "cancel_to_client_got_end": pct(to_end),
        "ended_before_cancel": ended_early,
    }


def sse_disconnects(base: str, key: str, trials: int, redis_url: str, prefix: str) -> dict:
    import httpx

    from streaming.eventlog import RedisLog

    stream_log = RedisLog(redis_url, prefix)
    latencies: list[float] = []
    ended_early = 0
    for _ in range(trials):
        with httpx.stream(
            "POST",
            f"{base}/v1/models/textgen/infer?stream=true",
            json={"input": {"prompt": "And God said", "max_tokens": 250}, "timeout_ms": 60000},
            headers={"X-API-Key": key},
            timeout=60,
        ) as response:
            stream_id = response.headers["x-sluice-stream"]
            tokens = 0
            for line in response.iter_lines():
                tokens += line == "event: token"
                if tokens == 3:
                    break
        gone = time.time()
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            events = stream_log.read(stream_id, count=2000)
            if events and events[-1].event == "end":
                end = events[-1].data
                if end.get("reason") == "cancelled":
                    latencies.append((end["stopped_at"] - gone) * 1000)
                else:
                    ended_early += 1
                break
            time.sleep(0.005)
    return {"disconnect_to_worker_stopped": pct(latencies), "ended_before_cancel": ended_early}


def wait_http(url: str, timeout: float = 90) -> None:
    import httpx

    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--cancels", type=int, default=20)
    parser.add_argument("--database", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

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
        RATELIMIT_IP_RATE="100000000/m",
        WORKER_METRICS_PORT="0",
    )
    report: dict[str, Any] = {
        "benchmark": "streaming-infer",
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": "textgen (built-in tiny GPT-2), max_tokens 8, sampling at temperature 0.8",
        "method": __doc__.split("Method:", 1)[1].strip(),
    }
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env["MEDIA_ROOT"] = tmp
        try:
            manage(env, "migrate", "--no-input", "-v0")
            # textgen alone, as a deployment serving it would: the whole demo would have the
            # worker load every built-in on the servers' core and slow the stack's figures.
            install = "from inference.registry.builtin import install; install('textgen')"
            manage(env, "shell", "-c", install)
            manage(env, "createtenant", "Bench", "--rpm", "1000000000", "--quota", "0")
            key = manage(env, "createapikey", "--tenant", "bench", "--scopes", "infer,streams")
            if (os.cpu_count() or 1) > 1:
                os.sched_setaffinity(0, {1})  # the client side; servers get CPU 0
            os.environ.update(env)  # this process loads the engine with the same settings
            report["engine_in_process_first_chunk"] = engine_ttfe(args.samples)
            port = 18000 + os.getpid() % 1000
            logs = Path(tmp)
            worker = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "4",
                "--queues",
                "celery,cpu",
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "INFO",
            ]
            web = [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)]
            wsgi_port = port + 1
            wsgi = gunicorn(wsgi_port, threads=8)
            for name, cmd in (("worker", worker), ("web", web), ("wsgi", wsgi)):
                out = (logs / f"{name}.log").open("wb")
                procs.append(
                    subprocess.Popen(
                        pinned(cmd, 0), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                    )
                )
            base = f"http://127.0.0.1:{port}"
            wsgi_base = f"http://127.0.0.1:{wsgi_port}"
            wait_http(f"{base}/healthz")
            wait_http(f"{wsgi_base}/healthz")
            give_up = time.monotonic() + 120
            while "ready." not in (logs / "worker.log").read_text(errors="replace"):
                if time.monotonic() > give_up:
                    raise TimeoutError((logs / "worker.log").read_text()[-2000:])
                time.sleep(0.2)
            engine = report["engine_in_process_first_chunk"]
            for label, url in (("", wsgi_base), ("daphne_", base)):
                stack = stack_ttfe(url, key, args.samples)
                report[f"{label}stack_first_token"] = stack
                report[f"{label}platform_added_ttfe_ms"] = {
                    "p50": round(stack["first_token"]["p50_ms"] - engine["p50_ms"], 2),
                    "p90": round(stack["first_token"]["p90_ms"] - engine["p90_ms"], 2),
                    "target_p50": 10,
                }
            report["websocket_cancel"] = asyncio.run(ws_cancels(base, key, args.cancels))
            report["sse_disconnect"] = sse_disconnects(base, key, args.cancels, args.redis, prefix)
            report["cancel_target_ms"] = 250
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            with psycopg.connect(args.database, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            r = redis.Redis.from_url(args.redis)
            for k in r.scan_iter(match=f"{prefix}*"):
                r.delete(k)
    out = ROOT / "bench" / "results" / "streaming-infer.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "method"}, indent=1))


if __name__ == "__main__":
    main()
