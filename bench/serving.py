"""Unary inference through the whole stack: HTTP → auth and limits → web-side batch → Celery →
worker batcher → one reply per batch, on the production configuration (PostgreSQL + Redis,
gunicorn, a Celery worker), for ``digits`` (tiny: serving overhead dominates) and ``mlp``
(compute-bound: batching matters), next to in-process ONNX Runtime at batch 1 and 32.

    .venv/bin/python bench/serving.py            # the full run (about 25 minutes), or: make bench
    .venv/bin/python bench/serving.py --models digits --concurrency 64 --seconds 5 --repeats 1
    # the GPU check, on a machine with one (SQLite, a Redis of its own, PyTorch on cuda):
    python bench/serving.py --models mlp --device cuda --engine torch --database sqlite

Method (so figures compare with the peers' in the inference issue): the server-side processes
we start (gunicorn, the Celery worker) are pinned to CPU 0 with taskset, the load generator
(`wrk -t1`, Debian package `wrk`, a Lua POST script) to CPU 1; a 3 s warm-up, then `--seconds`
per run, `--repeats` runs, medians. Redis and PostgreSQL are the machine's own servers and are
not re-pinned (we do not own them). Each configuration — a model with batching on (the
version's max_batch_size/max_delay_ms) or off (max_batch_size=1, in the web process and in the
worker) — gets fresh processes, once per unary server (`--servers`): uvicorn serving
``config.unary`` (the front door on an event loop) and gunicorn serving ``config.wsgi`` (the
full stack on threads); the targets are read from the first. daphne (ASGI, `manage.py serve
--no-worker`, the full stack) serving digits with batching on is measured too, at the top
concurrency. Besides wrk's figures, each run records the CPU time the web and worker processes
spent per request (from /proc), which stays meaningful on a busy machine where req/s does not.
Writes bench/results/serving.json; `--profile` adds py-spy profiles (bench/collapse.py reads
them). `--device cuda` registers ``mlp`` on the ``gpu`` queue (`--engine torch` runs its ONNX
weights with PyTorch where onnxruntime has no CUDA provider) and measures the engine in-process
on that device too; `--database sqlite` needs no PostgreSQL (a machine lent for the GPU check
has none); where `taskset` is missing nothing is pinned.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auth_overhead import machine  # noqa: E402
from testing.processes import gunicorn, uvicorn  # noqa: E402

BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
# Digit 0 of scikit-learn's digits data.
DIGIT = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12]
DIGIT += [0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12]
DIGIT += [0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
INPUTS: dict[str, dict[str, Any]] = {
    "digits": {"pixels": DIGIT},
    "mlp": {"features": [round(0.01 * (i % 97), 2) for i in range(64)]},
}
ONNX_FEED = {"digits": "X", "mlp": "X"}


@dataclass
class Options:
    models: list[str]
    concurrency: list[int]
    seconds: int
    warmup: int
    repeats: int
    profile: bool
    daphne: bool
    worker_threads: int
    servers: list[str]
    device: str = "cpu"
    engine: str = "onnx"
    hidden: str = ""


def pin(cpu: int) -> list[str]:
    """The taskset prefix that pins a command to ``cpu`` (nothing where taskset is missing)."""
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def two_free_ports() -> tuple[int, int]:
    """Two distinct free ports (both held while asking, so they cannot be the same)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return int(a.getsockname()[1]), int(b.getsockname()[1])


def wait_http(url: str, timeout: float = 180) -> None:
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants (all threads), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        todo += children.get(current, [])
    return total


def parse_wrk(out: str) -> dict[str, float]:
    def dur(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": rps,
        "p50_ms": dur(lat["50"]),
        "p99_ms": dur(lat["99"]),
        "errors": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
        "requests": int(total.group(1)) if total else 0,
    }


def batches(metrics_url: str) -> tuple[float, float]:
    """(model calls, items) so far, from the worker's ``sluice_batch_size`` histogram."""
    import httpx

    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return 0.0, 0.0
    count = sum(float(v) for v in re.findall(r"^sluice_batch_size_count\{.*?\} (\S+)", text, re.M))
    total = sum(float(v) for v in re.findall(r"^sluice_batch_size_sum\{.*?\} (\S+)", text, re.M))
    return count, total


def run_wrk(
    url: str,
    key: str,
    conc: int,
    seconds: int,
    script: Path,
    pids: dict[str, int],
    metrics_url: str,
) -> dict[str, float]:
    cmd = [*pin(1), "wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--latency"]
    cmd += ["-s", str(script), "-H", f"X-API-Key: {key}", url]
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    calls, items = batches(metrics_url)
    result = parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    served = max(1.0, result["requests"])
    for name, pid in pids.items():
        result[f"{name}_cpu_us_per_request"] = round(
            (cpu_seconds(pid) - before[name]) / served * 1e6, 1
        )
    calls_after, items_after = batches(metrics_url)
    if calls_after > calls:
        result["mean_model_batch"] = round((items_after - items) / (calls_after - calls), 1)
    return result


def server_command(server: str, port: int, threads: int) -> list[str]:
    if server == "daphne":
        cmd = [sys.executable, "manage.py", "serve", "--no-worker", "--host", "127.0.0.1"]
        return [*cmd, "--port", str(port)]
    if server == "uvicorn":
        return uvicorn(port)
    return gunicorn(port, threads=threads)


def bench_config(
    model: str,
    batching: str,
    server: str,
    env: dict[str, str],
    key: str,
    opts: Options,
    script: Path,
    concurrency: list[int],
) -> dict[str, object]:
    name = f"{model}-batching-{batching}-{server}"
    port, metrics_port = two_free_ports()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    # Fresh Redis keys per configuration: no breaker state or queue slot carries over.
    env = {
        **env,
        "REDIS_KEY_PREFIX": f"{env['REDIS_KEY_PREFIX']}-{name}",
        "WORKER_METRICS_PORT": str(metrics_port),
    }
    worker = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "cpu,gpu"]
    worker += ["-P", "threads"]
    worker += ["-c", str(opts.worker_threads), "--without-heartbeat", "--without-mingle"]
    worker += ["--without-gossip", "-l", "WARNING"]
    logs = {label: tempfile.TemporaryFile() for label in ("web", "worker")}  # noqa: SIM115
    commands = {
        "web": [*pin(0), *server_command(server, port, max(concurrency) + 8)],
        "worker": [*pin(0), *worker],
    }
    procs = {
        label: subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=logs[label], stderr=subprocess.STDOUT
        )
        for label, cmd in commands.items()
    }
    pids = {label: proc.pid for label, proc in procs.items()}
    url = f"http://127.0.0.1:{port}/v1/models/{model}/infer"
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz")
        except TimeoutError:
            logs["web"].seek(0)
            raise RuntimeError(
                f"{name}: the web process did not start:\n" + logs["web"].read().decode()[-3000:]
            ) from None
        import httpx

        give_up = time.monotonic() + 30
        while True:
            probe = httpx.post(
                url,
                content=json.dumps({"input": INPUTS[model]}),
                timeout=60,
                headers={"X-API-Key": key, "Content-Type": "application/json"},
            )
            # 503 no-worker until the web process sees the worker's claim on its queue (it
            # asks at most once a second): retried, as its Retry-After says.
            if probe.status_code != 503 or time.monotonic() > give_up:
                break
            time.sleep(float(probe.headers.get("retry-after", "1")))
        if probe.status_code != 200:
            raise RuntimeError(f"probe answered {probe.status_code}: {probe.text[:500]}")
        results: dict[str, object] = {}
        for conc in concurrency:
            run_wrk(url, key, conc, opts.warmup, script, pids, metrics_url)  # warm-up
            if opts.profile and conc == max(concurrency):
                profile(pids, name, url, key, conc, script, metrics_url)
            runs = [
                run_wrk(url, key, conc, opts.seconds, script, pids, metrics_url)
                for _ in range(opts.repeats)
            ]
            point: dict[str, Any] = {
                field: statistics.median(r[field] for r in runs)
                for field in ("rps", "p50_ms", "p99_ms", *(f"{p}_cpu_us_per_request" for p in pids))
            }
            point["errors"] = sum(int(r["errors"]) for r in runs)
            sizes = [r["mean_model_batch"] for r in runs if "mean_model_batch" in r]
            point["mean_model_batch"] = statistics.median(sizes) if sizes else None
            point["runs"] = runs
            results[f"c{conc}"] = point
            web_cpu, worker_cpu = (point[f"{p}_cpu_us_per_request"] for p in ("web", "worker"))
            print(
                f"{name:30} c={conc:<3} {point['rps']:7.1f} req/s  p50 {point['p50_ms']:6.1f} ms"
                f"  p99 {point['p99_ms']:6.1f} ms  CPU per request: web {web_cpu:5.0f} µs,"
                f" worker {worker_cpu:5.0f} µs  batch {point['mean_model_batch']}"
                f"  errors {point['errors']}",
                flush=True,
            )
        return {"model": model, "batching": batching, "server": server, **results}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs.values():
            log.close()


def profile(
    pids: dict[str, int], name: str, url: str, key: str, conc: int, script: Path, metrics_url: str
) -> None:
    """Sample the web and worker processes with py-spy during one load run (collapsed stacks
    in bench/results/profile-<config>-<process>.txt)."""
    spies = []
    for label, pid in pids.items():
        out = RESULTS / f"profile-{name}-{label}.txt"
        cmd = [str(BIN / "py-spy"), "record", "--format", "raw", "--duration", "8"]
        # --gil: only the thread holding the GIL, i.e. where the pinned core's Python time
        # goes, not threads waiting on a socket or for the GIL.
        cmd += ["--rate", "200", "--gil", "--subprocesses", "--pid", str(pid), "--output", str(out)]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    run_wrk(url, key, conc, 10, script, pids, metrics_url)
    for spy in spies:
        spy.wait(timeout=60)


def in_process_onnx(env: dict[str, str], model: str, hidden: str = "") -> dict[str, float]:
    """The same model in ONNX Runtime in one process on CPU 0, batch 1 and 32 (one
    intra-op thread, as the worker runs it): the ceiling the platform is measured against."""
    build = "digits_build().onnx" if model == "digits" else f"mlp_build({mlp_hidden(hidden)})"
    code = (
        "import json, time, django, numpy as np, onnxruntime as ort\n"
        "django.setup()\n"
        f"from inference.registry.builtin import {build.split('(')[0]}\n"
        "o = ort.SessionOptions(); o.intra_op_num_threads = 1\n"
        f"s = ort.InferenceSession({build}, o, providers=['CPUExecutionProvider'])\n"
        f"row = np.asarray({INPUTS[model]!r}.popitem()[1], np.float32)\n"
        "run = lambda x: s.run(None, {'X': x})\n"
    )
    return in_process(env, code)


def in_process_torch(env: dict[str, str], device: str, hidden: str = "") -> dict[str, float]:
    """``mlp`` run by PyTorch (:class:`inference.handlers.TorchMLP`, what the worker runs for
    ``--engine torch``) on ``device``, batch 1 and 32, host arrays in and out."""
    code = (
        "import json, time, django, numpy as np\n"
        "django.setup()\n"
        "from inference.registry.builtin import MLP_OPTIONS, mlp_build\n"
        "from inference.handlers import TorchMLP\n"
        f"m = TorchMLP(options={{**MLP_OPTIONS, 'device': {device!r}}},"
        f" artifact=mlp_build({mlp_hidden(hidden)}))\n"
        f"row = np.asarray({INPUTS['mlp']['features']!r}, np.float32)\n"
        "run = m.forward\n"
    )
    return in_process(env, code)


def mlp_hidden(hidden: str) -> str:
    """mlp_build's keyword for ``--hidden`` (empty: the default widths)."""
    return f"hidden=({hidden},)" if hidden else ""


# Appended to an in-process measurement's set-up, which defines ``row`` (one input) and
# ``run`` (the engine on a batch of rows): items/s at batch 1 and 32, after a warm-up.
TIME_BATCHES = (
    "out = {}\n"
    "for b in (1, 32):\n"
    "    x = np.tile(row, (b, 1))\n"
    "    for _ in range(20): run(x)\n"
    "    n = 0; t = time.perf_counter()\n"
    "    while time.perf_counter() - t < 3: run(x); n += b\n"
    "    out[f'batch{b}_items_per_s'] = round(n / (time.perf_counter() - t))\n"
    "print(json.dumps(out))\n"
)


def in_process(env: dict[str, str], setup: str) -> dict[str, float]:
    res = subprocess.run(
        [*pin(0), sys.executable, "-c", setup + TIME_BATCHES],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def set_batching(env: dict[str, str], model: str, on: bool) -> None:
    size = "32" if on else "1"
    manage(
        env,
        "shell",
        "-c",
        "from inference.models import ModelVersion;"
        f"ModelVersion.objects.filter(model__name={model!r}).update(max_batch_size={size})",
    )


def lua_script(tmp: Path, model: str) -> Path:
    script = tmp / f"post-{model}.lua"
    body = json.dumps({"input": INPUTS[model]})
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return script


def summary(report: dict[str, Any], top: int) -> dict[str, Any]:
    unary = report["settings"]["servers"][0]

    def point(model: str, batching: str, server: str = unary) -> dict[str, Any] | None:
        for run in report["runs"]:
            if (run["model"], run["batching"], run["server"]) == (model, batching, server):
                found: dict[str, Any] | None = run.get(f"c{top}")
                return found
        return None

    out: dict[str, Any] = {"unary_server": unary}
    digits = point("digits", "on")
    if digits:
        out[f"digits_c{top}"] = {
            "rps": digits["rps"],
            "p99_ms": digits["p99_ms"],
            "target": "≥ 2000 req/s with p99 ≤ 50 ms",
            "met": digits["rps"] >= 2000 and digits["p99_ms"] <= 50,
        }
    on, off = point("mlp", "on"), point("mlp", "off")
    if on and off and off["rps"]:
        ratio = round(on["rps"] / off["rps"], 2)
        out[f"mlp_batching_speedup_c{top}"] = {
            "ratio": ratio,
            "target": "at least 3 times",
            "met": ratio >= 3,
        }
    servers = {s: point("digits", "on", s) for s in ("uvicorn", "gunicorn", "daphne")}
    if sum(1 for found in servers.values() if found) > 1:
        out[f"server_c{top}"] = {
            f"{server}_{field}": found[field]
            for server, found in servers.items()
            if found
            for field in ("rps", "p99_ms")
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["digits", "mlp"], choices=sorted(INPUTS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batching", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--no-daphne", action="store_true", help="skip the ASGI comparison")
    parser.add_argument(
        "--servers",
        nargs="+",
        default=["uvicorn", "gunicorn"],
        choices=["uvicorn", "gunicorn"],
        help="unary servers to measure (the first is the one the targets are read from)",
    )
    parser.add_argument("--worker-threads", type=int, default=16)
    parser.add_argument("--profile", action="store_true", help="py-spy the top concurrency")
    parser.add_argument(
        "--database",
        default="postgres://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server to create the benchmark's database on, or sqlite",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="mlp's device")
    parser.add_argument("--engine", choices=["onnx", "torch"], default="onnx", help="mlp's engine")
    parser.add_argument("--hidden", default="", help="mlp's hidden widths, e.g. 4096,4096,4096")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--output", default=str(RESULTS / "serving.json"))
    args = parser.parse_args()
    opts = Options(
        models=args.models,
        concurrency=args.concurrency,
        seconds=args.seconds,
        warmup=args.warmup,
        repeats=args.repeats,
        profile=args.profile,
        daphne=not args.no_daphne and "digits" in args.models and "on" in args.batching,
        worker_threads=args.worker_threads,
        servers=args.servers,
        device=args.device,
        engine=args.engine,
        hidden=args.hidden,
    )

    import redis

    started = time.monotonic()
    dbname = f"sluice_bench_{uuid.uuid4().hex[:8]}"
    postgres = args.database != "sqlite"
    if postgres:
        import psycopg

        with psycopg.connect(args.database, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
    prefix = f"sluice-bench-{uuid.uuid4().hex[:8]}"
    base = args.database.rsplit("/", 1)[0]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 40,
        SECURE_SSL_REDIRECT="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        REDIS_URL=args.redis,
        REDIS_KEY_PREFIX=prefix,
        LOG_LEVEL="WARNING",
        RATELIMIT_IP_RATE="100000000/m",
        INFERENCE_QUEUE_BOUND="100000",
    )
    report: dict[str, Any] = {
        "benchmark": "serving",
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": (__doc__ or "").split("Method", 1)[1].strip(),
        "settings": {
            "seconds": opts.seconds,
            "warmup": opts.warmup,
            "repeats": opts.repeats,
            "concurrency": opts.concurrency,
            "worker_threads": opts.worker_threads,
            "web": {
                "uvicorn": "config.unary, 1 process, httptools, uvloop",
                "gunicorn": "config.wsgi, gthread, 1 process, max(concurrency)+8 threads",
                "daphne": "manage.py serve --no-worker, 1 process",
            },
            "servers": opts.servers,
            "database": "postgresql" if postgres else "sqlite",
            "mlp": {"device": opts.device, "engine": opts.engine, "hidden": opts.hidden or None},
        },
        "in_process_onnx": {},
        "runs": [],
    }
    top = max(opts.concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        env["MEDIA_ROOT"] = tmp
        env["DATABASE_URL"] = f"{base}/{dbname}" if postgres else f"sqlite:///{tmp}/bench.sqlite3"
        try:
            manage(env, "migrate", "--no-input", "-v0")
            # Only the benchmark's models: a worker preloads every active version of its
            # queues, and the demo's embeddings model would spend the pinned core on torch.
            for model in opts.models:
                if model == "digits":
                    manage(env, "builddigits")
                else:
                    build = ["buildmlp", "--device", opts.device, "--engine", opts.engine]
                    manage(env, *build, *(["--hidden", opts.hidden] if opts.hidden else []))
            manage(env, "createtenant", "Bench", "--rpm", "1000000000", "--quota", "0")
            key = manage(env, "createapikey", "--tenant", "bench", "--scopes", "infer")
            for model in opts.models:
                measured = in_process_onnx(env, model, opts.hidden if model == "mlp" else "")
                report["in_process_onnx"][model] = measured
                print(f"{model:34} in-process ONNX Runtime (CPU) {measured}")
                if model == "mlp" and opts.engine == "torch":
                    measured = in_process_torch(env, opts.device, opts.hidden)
                    report[f"in_process_torch_{opts.device}"] = measured
                    print(f"{model:34} in-process PyTorch ({opts.device}) {measured}")
                script = lua_script(Path(tmp), model)
                for batching in args.batching:
                    set_batching(env, model, batching == "on")
                    for server in opts.servers:
                        report["runs"].append(
                            bench_config(
                                model, batching, server, env, key, opts, script, opts.concurrency
                            )
                        )
                    if opts.daphne and model == "digits" and batching == "on":
                        report["runs"].append(
                            bench_config(model, "on", "daphne", env, key, opts, script, [top])
                        )
        finally:
            if postgres:
                with psycopg.connect(args.database, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            r = redis.Redis.from_url(args.redis)
            for k in r.scan_iter(match=f"{prefix}*"):
                r.delete(k)
    report["summary"] = summary(report, top)
    report["wall_seconds"] = round(time.monotonic() - started)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=1, ensure_ascii=False))
    print(f"wrote {args.output} in {report['wall_seconds']} s")


if __name__ == "__main__":
    main()
