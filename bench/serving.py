"""Unary inference through the whole stack: HTTP → auth and limits → Celery → worker batcher →
reply, on the production configuration (PostgreSQL + Redis, gunicorn, a Celery worker).

    .venv/bin/python bench/serving.py [--concurrency 1 16 64] [--seconds 15] [--repeats 3]

Method (so figures compare with the peers' in the inference issue): the server-side processes
we start (gunicorn, the Celery worker) are pinned to CPU 0 with taskset, the load generator
(`wrk -t1`, Debian package `wrk`, a Lua POST script) to CPU 1; a 3 s warm-up, then `--seconds`
per run, `--repeats` runs, medians. Redis and PostgreSQL are the machine's own servers and are
not re-pinned (we do not own them). Each configuration — batching on (the version's
max_batch_size/max_delay_ms) and off (max_batch_size=1) — gets fresh processes. Writes
bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auth_overhead import machine  # noqa: E402
from testing.processes import gunicorn  # noqa: E402

DIGIT = [
    0,
    0,
    5,
    13,
    9,
    1,
    0,
    0,
    0,
    0,
    13,
    15,
    10,
    15,
    5,
    0,
    0,
    3,
    15,
    2,
    0,
    11,
    8,
    0,
    0,
    4,
    12,
    0,
    0,
    8,
    8,
    0,
    0,
    5,
    8,
    0,
    0,
    9,
    8,
    0,
    0,
    4,
    11,
    0,
    1,
    12,
    7,
    0,
    0,
    2,
    14,
    5,
    10,
    12,
    0,
    0,
    0,
    0,
    6,
    13,
    10,
    0,
    0,
    0,
]
BIN = Path(sys.executable).parent


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def wait_http(url: str, timeout: float = 60) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def parse_wrk(out: str) -> dict[str, float]:
    def dur(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": rps,
        "p50_ms": dur(lat["50"]),
        "p99_ms": dur(lat["99"]),
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "requests": int(total.group(1)) if total else 0,
    }


def run_wrk(url: str, key: str, conc: int, seconds: int, script: Path) -> dict[str, float]:
    cmd = [
        "taskset",
        "-c",
        "1",
        "wrk",
        "-t1",
        f"-c{conc}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        "-H",
        f"X-API-Key: {key}",
        url,
    ]
    return parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def bench_config(
    name: str, env: dict[str, str], key: str, args: argparse.Namespace, script: Path
) -> dict[str, object]:
    port = 18000 + os.getpid() % 1000
    # Fresh Redis keys per configuration: no breaker state or queue slot carries over.
    env = {**env, "REDIS_KEY_PREFIX": f"{env['REDIS_KEY_PREFIX']}-{name.replace(' ', '-')}"}
    procs = [
        subprocess.Popen(
            ["taskset", "-c", "0", *gunicorn(port, threads=max(args.concurrency) + 8)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                str(BIN / "celery"),
                "-A",
                "config",
                "worker",
                "-Q",
                "cpu",
                "-P",
                "threads",
                "-c",
                str(max(args.concurrency) + 8),
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    url = f"http://127.0.0.1:{port}/v1/models/digits/infer"
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        import httpx

        probe = httpx.post(
            url,
            content=json.dumps({"input": {"pixels": DIGIT}}),
            timeout=30,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        if probe.status_code != 200:
            raise RuntimeError(f"probe answered {probe.status_code}: {probe.text[:500]}")
        results: dict[str, object] = {}
        for conc in args.concurrency:
            run_wrk(url, key, conc, 3, script)  # warm-up (model load, connections)
            if args.profile and conc == max(args.concurrency):
                profile(procs, name, url, key, conc, script)
            runs = [run_wrk(url, key, conc, args.seconds, script) for _ in range(args.repeats)]
            results[f"c{conc}"] = {
                "rps": statistics.median(r["rps"] for r in runs),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "errors": sum(int(r["errors"]) for r in runs),
                "runs": runs,
            }
            print(name, conc, results[f"c{conc}"]["rps"], results[f"c{conc}"]["p99_ms"], flush=True)
        return {"config": name, **results}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)


def profile(
    procs: list[subprocess.Popen[bytes]], name: str, url: str, key: str, conc: int, script: Path
) -> None:
    """Sample the web and worker processes with py-spy during one load run (collapsed stacks
    in bench/results/profile-<config>-<process>.txt)."""
    outs = []
    for proc, label in zip(procs, ("web", "worker"), strict=True):
        out = ROOT / "bench" / "results" / f"profile-{name.replace(' ', '-')}-{label}.txt"
        outs.append(
            subprocess.Popen(
                [
                    str(BIN / "py-spy"),
                    "record",
                    "--format",
                    "raw",
                    "--duration",
                    "8",
                    "--rate",
                    "200",
                    "--subprocesses",
                    "--pid",
                    str(proc.pid),
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    run_wrk(url, key, conc, 10, script)
    for spy in outs:
        spy.wait(timeout=60)


def in_process_onnx(env: dict[str, str]) -> dict[str, float]:
    """The same model in ONNX Runtime in this process, batch 1 and 32 (the floor)."""
    code = (
        "import json, time, django, numpy as np, onnxruntime as ort\n"
        "django.setup()\n"
        "from inference.builtin import digits_build\n"
        "s = ort.InferenceSession(digits_build().onnx, providers=['CPUExecutionProvider'])\n"
        "name = s.get_inputs()[0].name\n"
        "out = {}\n"
        "for b in (1, 32):\n"
        "    x = np.ones((b, 64), np.float32)\n"
        "    for _ in range(200): s.run(None, {name: x})\n"
        "    n = 0; t = time.perf_counter()\n"
        "    while time.perf_counter() - t < 3: s.run(None, {name: x}); n += b\n"
        "    out[f'batch{b}_items_per_s'] = round(n / (time.perf_counter() - t))\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy the top concurrency")
    parser.add_argument("--database", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

    import psycopg
    import redis

    dbname = f"sluice_bench_{uuid.uuid4().hex[:8]}"
    admin_url = args.database
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    prefix = f"sluice-bench-{uuid.uuid4().hex[:8]}"
    base = admin_url.rsplit("/", 1)[0]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 40,
        SECURE_SSL_REDIRECT="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"{base}/{dbname}",
        REDIS_URL=args.redis,
        REDIS_KEY_PREFIX=prefix,
        LOG_LEVEL="WARNING",
        RATELIMIT_IP_RATE="100000000/m",
        WORKER_METRICS_PORT="0",
        INFERENCE_QUEUE_BOUND="100000",
    )
    report: dict[str, object] = {
        "benchmark": "serving",
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": __doc__.split("Method", 1)[1].strip(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        env["MEDIA_ROOT"] = tmp
        script = Path(tmp) / "post.lua"
        body = json.dumps({"input": {"pixels": DIGIT}})
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        try:
            manage(env, "migrate", "--no-input", "-v0")
            manage(env, "demo", "--key-file", str(Path(tmp) / "key"))
            manage(env, "createtenant", "Bench", "--rpm", "1000000000", "--quota", "0")
            key = manage(env, "createapikey", "--tenant", "bench", "--scopes", "infer")
            report["in_process_onnx"] = in_process_onnx(env)
            runs = [bench_config("batching on", env, key, args, script)]
            manage(
                env,
                "shell",
                "-c",
                "from inference.models import ModelVersion;"
                "ModelVersion.objects.filter(model__name='digits').update(max_batch_size=1)",
            )
            runs.append(bench_config("batching off", env, key, args, script))
            report["runs"] = runs
        finally:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            r = redis.Redis.from_url(args.redis)
            for k in r.scan_iter(match=f"{prefix}*"):
                r.delete(k)
    out = ROOT / "bench" / "results" / "serving.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "method"}, indent=1)[:3000])


if __name__ == "__main__":
    main()
