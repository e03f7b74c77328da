"""Authenticated request overhead: API-key verification and rate-limit checks, per request.

    .venv/bin/python bench/auth_overhead.py [--redis redis://127.0.0.1:6379/11] [--n 20000]

Runs each configuration in a child process on a throw-away SQLite database: the embedded
default (local-memory counters) and, when --redis is given, Redis-backed counters. Writes
bench/results/auth-overhead.json with p50/p99 in microseconds and a description of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, object]:
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in cpuinfo.read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    found: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if shutil.which("nvidia-smi"):
        query = [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ]
        gpus = subprocess.run(query, capture_output=True, text=True, check=False).stdout
        found["gpus"] = [line.strip() for line in gpus.splitlines() if line.strip()]
    return found


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(p99 * 1e6, 1),
        "n": len(ordered),
    }


def timed(fn, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    for _ in range(min(1000, n)):  # warm-up
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def child(n: int) -> dict[str, object]:
    """Runs inside a configured process (settings come from the environment)."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client, RequestFactory

    from plumbing import ratelimit
    from tenants.limits import enforce_plan
    from tenants.selectors import key_verify
    from tenants.services import apikey_create, tenant_create

    call_command("migrate", verbosity=0)
    tenant = tenant_create(
        name=f"Bench {uuid.uuid4().hex[:6]}", requests_per_minute=10**9, monthly_request_quota=0
    )
    _, raw = apikey_create(tenant=tenant, name="bench", scopes=["infer"])
    ctx = key_verify(raw)
    request = RequestFactory().get("/v1/tenant", REMOTE_ADDR="127.0.0.1")
    client = Client(HTTP_X_API_KEY=raw, HTTP_HOST="localhost")
    assert client.get("/v1/tenant").status_code == 200
    return {
        "key_verification": timed(lambda: key_verify(raw), n),
        "ip_rate_limit_check": timed(
            lambda: ratelimit.hit(request, group="ip", value="127.0.0.1", rate="1000000000/m"), n
        ),
        "plan_limit_check": timed(lambda: enforce_plan(request, ctx), n),
        "authenticated_request_in_process": timed(lambda: client.get("/v1/tenant"), n // 4),
        "unauthenticated_healthz_in_process": timed(lambda: client.get("/healthz"), n // 4),
    }


def run_config(name: str, n: int, redis_url: str | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DEBUG="false",
            SECRET_KEY="bench-" + "x" * 40,
            SECURE_SSL_REDIRECT="false",
            DATABASE_URL=f"sqlite:///{tmp}/bench.sqlite3",
            LOG_LEVEL="ERROR",
            RATELIMIT_IP_RATE="1000000000/m",
        )
        if redis_url:
            env.update(REDIS_URL=redis_url, REDIS_KEY_PREFIX=f"sluice-bench-{uuid.uuid4().hex[:8]}")
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--n", str(n)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        if redis_url:
            import redis

            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{env['REDIS_KEY_PREFIX']}*"):
                client.delete(key)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"config": name, **result}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"))
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "auth-overhead.json"))
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(child(args.n)))
        return
    runs = [run_config("embedded (local-memory counters)", args.n, None)]
    if args.redis:
        runs.append(run_config("redis counters", args.n, args.redis))
    report = {
        "benchmark": "auth_overhead",
        "machine": machine(),
        "runs": runs,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
