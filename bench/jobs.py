"""Batch jobs end to end on the production configuration: a 100,000-input job on the built-in
``digits`` model, PostgreSQL + Redis, real ``celery worker -Q jobs`` processes and gunicorn.

    .venv/bin/python bench/jobs.py [--inputs 100000] [--workers 2] [--chunk-size 500]
                                   [--fairness-big 20000] [--fairness-small 1000]

Method: a database of its own (created and dropped here) and a Redis key prefix of its own on
REDIS_URL (default redis://127.0.0.1:6379/12). ``manage.py demo`` loads the tenant, key and the
``digits`` model. The inputs (8x8 digits of scikit-learn's bundled data, cycled) are written as
JSONL to storage under ``inputs/demo/``, then one ``POST /v1/jobs`` with that ``input_uri``
(so the clock includes parsing and inserting every task row). The clock stops when the job
row is terminal (polled every 50 ms). Every task's state and result is in PostgreSQL.

Reported: tasks per minute end to end, the submission (POST) time, the run time after it, the
time inside the model (summed by the workers), the workers' CPU time per task (from
/proc, worker processes and their pool children) and the overhead per task outside the model.
Fairness: a small job submitted right behind a big one, against the same small job alone.
Writes bench/results/jobs.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auth_overhead import machine  # noqa: E402
from testing.processes import free_port, gunicorn  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def database(base: str) -> Iterator[str]:
    import psycopg

    name = f"sluice_bench_jobs_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (prefork pool processes are
    alive: they are read one by one by the caller)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / TICKS
    return 0.0


def tree(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return [pid, *[k for kid in kids for k in tree(kid)]]


def workers_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for root in pids for p in tree(root))


def write_inputs(media: Path, name: str, n: int) -> str:
    from sklearn.datasets import load_digits

    images = load_digits().data
    path = media / "inputs" / "demo" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"pixels": [int(v) for v in images[i % len(images)]]}) + "\n")
    return f"storage://inputs/demo/{name}"


class Stack:
    def __init__(self, env: dict[str, str], workers: int, tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        log = (tmp / "worker.log").open("wb")
        self.worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                "jobs",
                "-P",
                "prefork",
                "-c",
                str(workers),
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        web = gunicorn(self.port, threads=4)
        self.procs = [
            self.worker,
            subprocess.Popen(
                web,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            ),
        ]
        import httpx

        end = time.monotonic() + 90
        while b"ready." not in (tmp / "worker.log").read_bytes():
            if time.monotonic() > end:
                raise TimeoutError("worker did not start")
            time.sleep(0.2)
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > end:
                raise TimeoutError("gunicorn did not start")
            time.sleep(0.2)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def job_row(db_url: str, job_id: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT status, total, succeeded, failed, model_seconds, created_at, finished_at "
            "FROM jobs_job WHERE id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    keys = ("status", "total", "succeeded", "failed", "model_seconds", "created_at", "finished")
    return dict(zip(keys, row, strict=True))


def submit(stack: Stack, key: str, uri: str, chunk: int) -> tuple[str, float]:
    import httpx

    started = time.perf_counter()
    response = httpx.post(
        f"{stack.base}/v1/jobs",
        json={"model": "digits", "input_uri": uri, "options": {"chunk_size": chunk}},
        headers={"X-API-Key": key},
        timeout=600,
    )
    response.raise_for_status()
    return response.json()["id"], started


def wait(db_url: str, job_id: str, timeout: float = 900) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        row = job_row(db_url, job_id)
        if row["status"] not in ("queued", "running"):
            return row
        time.sleep(0.05)
    raise TimeoutError(job_id)


def throughput(stack: Stack, db_url: str, key: str, uri: str, n: int, chunk: int) -> dict:
    cpu_before = workers_cpu([stack.worker.pid])
    job_id, started = submit(stack, key, uri, chunk)
    submitted = time.perf_counter()
    row = wait(db_url, job_id)
    finished = time.perf_counter()
    cpu = workers_cpu([stack.worker.pid]) - cpu_before
    total = finished - started
    assert row["status"] == "succeeded" and row["succeeded"] == n, row
    return {
        "inputs": n,
        "chunk_size": chunk,
        "status": row["status"],
        "seconds_total": round(total, 2),
        "seconds_submit": round(submitted - started, 2),
        "seconds_run": round(finished - submitted, 2),
        "tasks_per_minute": round(n / total * 60),
        "tasks_per_minute_after_submit": round(n / (finished - submitted) * 60),
        "model_us_per_task": round(row["model_seconds"] / n * 1e6, 1),
        "worker_cpu_us_per_task": round(cpu / n * 1e6, 1),
        "worker_overhead_us_per_task": round((cpu - row["model_seconds"]) / n * 1e6, 1),
        "wall_us_per_task": round(total / n * 1e6, 1),
    }


def fairness(stack: Stack, db_url: str, key: str, media: Path, big: int, small: int) -> dict:
    big_uri = write_inputs(media, "fair-big.jsonl", big)
    small_uri = write_inputs(media, "fair-small.jsonl", small)
    alone_id, t0 = submit(stack, key, small_uri, 500)
    wait(db_url, alone_id)
    alone = time.perf_counter() - t0
    big_id, _ = submit(stack, key, big_uri, 500)
    behind_id, t1 = submit(stack, key, small_uri, 500)
    wait(db_url, behind_id)
    behind = time.perf_counter() - t1
    big_row = job_row(db_url, big_id)
    wait(db_url, big_id)
    return {
        "small_inputs": small,
        "big_inputs": big,
        "small_alone_seconds": round(alone, 2),
        "small_behind_big_seconds": round(behind, 2),
        "big_job_done_when_small_finished": f"{big_row['succeeded']}/{big_row['total']}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--fairness-big", type=int, default=20_000)
    parser.add_argument("--fairness-small", type=int, default=1_000)
    parser.add_argument("--database", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument(
        "--redis", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/12"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "jobs.json"))
    args = parser.parse_args()

    with database(args.database) as db_url, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        media = tmp / "media"
        prefix = f"bench-jobs-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "DEBUG": "false",
            "SECRET_KEY": "bench-" + "x" * 50,
            "SECURE_SSL_REDIRECT": "false",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DATABASE_URL": db_url,
            "REDIS_URL": args.redis,
            "REDIS_KEY_PREFIX": prefix,
            "MEDIA_ROOT": str(media),
            "LOG_LEVEL": "WARNING",
            "RATELIMIT_ENABLE": "false",
            "WORKER_METRICS_PORT": "0",
            "API_MAX_BODY_BYTES": str(64 * 1024 * 1024),
        }
        manage(env, "migrate", "--no-input", "-v0")
        key = manage(env, "demo", "--key-file", str(tmp / "key")).splitlines()[-1]
        uri = write_inputs(media, "bench.jsonl", args.inputs)
        stack = Stack(env, args.workers, tmp)
        try:
            warm = write_inputs(media, "warm.jsonl", 2000)
            wait(db_url, submit(stack, key, warm, args.chunk_size)[0])
            result = throughput(stack, db_url, key, uri, args.inputs, args.chunk_size)
            fair = fairness(stack, db_url, key, media, args.fairness_big, args.fairness_small)
        finally:
            stack.stop()
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis.from_url(args.redis)
                for k in client.scan_iter(match=f"{prefix}*", count=1000):
                    client.delete(k)

    report = {
        "benchmark": "jobs",
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": __doc__.split("\n\n", 2)[2].strip(),
        "config": {
            "workers": f"celery worker -Q jobs -P prefork -c {args.workers}",
            "web": "gunicorn gthread, 1 worker, 4 threads",
            "window": "JOBS_WINDOW default",
            "note": "2 cores shared with PostgreSQL, Redis and other users of this machine",
        },
        "throughput": result,
        "fairness": fair,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
