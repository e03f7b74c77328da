"""The embedded default's shared spool (plumbing/spool.py), measured: unary latency of
``manage.py serve`` with the spool (its own work on the in-process memory transport, a bridge
polling the spool) against the in-process memory broker alone (``EMBEDDED_BROKER_DIR=`` empty,
what the embedded default had before), and the time from ``manage.py submitjob`` (no
``--follow``, another process) to the job's end.

    .venv/bin/python bench/embedded_broker.py [--requests 200] [--rounds 3] [--jobs 3]

Method: one SQLite database and demo (``manage.py demo``) in a temporary folder; per round a
fresh ``manage.py serve`` per configuration, interleaved (memory, spool, memory, spool…); 20
warm-up requests, then ``--requests`` sequential ``POST /v1/models/digits/infer`` on one
keep-alive connection; p50 and p99 per round, medians over rounds. With the spool, ``--jobs``
times: ``submitjob`` of a 20-line sentiment file, then ``GET /v1/jobs/{id}`` every 20 ms until
the job is terminal, from the command's start (its Django start-up included) and from its
exit (the job queued). Without the spool the same job stays queued (its chunk is on the command's
own broker) until the reconciler resends it: one such run is recorded with a 10 s cap.
Writes bench/results/embedded_broker.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testing.processes import free_port, manage, running  # noqa: E402

PIXELS = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0]
PIXELS += [0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0]
PIXELS += [0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]


def _env(tmp: Path, spool: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.pop("CELERY_BROKER_URL", None)
    env.update(
        DEBUG="true",
        SECRET_KEY="bench-" + "x" * 50,
        ENV_FILE="",
        DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}",
        DEMO_KEY_FILE=str(tmp / "demo-key"),
        EMBEDDED_BROKER_DIR=str(tmp / "broker") if spool else "",
        LOG_LEVEL="WARNING",
        INFERENCE_PRELOAD="true",
        RATELIMIT_ENABLE="false",  # limits are not what is measured (and 600/min would bite)
    )
    return env


def _latencies(base: str, key: str, n: int) -> list[float]:
    body = {"input": {"pixels": PIXELS}}
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as client:
        for _ in range(20):
            client.post("/v1/models/digits/infer", json=body).raise_for_status()
        out = []
        for _ in range(n):
            started = time.perf_counter()
            client.post("/v1/models/digits/infer", json=body).raise_for_status()
            out.append((time.perf_counter() - started) * 1000)
    return out


def _job_seconds(
    env: dict[str, str], base: str, key: str, file: Path, cap: float
) -> tuple[float, float]:
    """Seconds from starting ``submitjob`` to the job's end, and from the command's exit (the
    job queued) to its end; infinite past ``cap``."""
    started = time.perf_counter()
    job_id = manage(env, "submitjob", str(file), "--model", "sentiment")
    queued = time.perf_counter()
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=10) as client:
        while time.perf_counter() - started < cap:
            status = client.get(f"/v1/jobs/{job_id}").json()["status"]
            if status not in ("queued", "running"):
                if status != "succeeded":
                    raise RuntimeError(f"job {job_id} {status}")
                done = time.perf_counter()
                return done - started, done - queued
            time.sleep(0.02)
    return float("inf"), float("inf")


def _s(seconds: float) -> float | None:
    return round(seconds, 2) if seconds != float("inf") else None


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {"requests": args.requests, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        manage(_env(tmp, True), "migrate", "--no-input", "-v0", timeout=600)
        key = manage(_env(tmp, True), "demo", timeout=600)
        lines = [json.dumps({"text": f"I like item {n} a lot"}) for n in range(20)]
        (tmp / "job.jsonl").write_text("\n".join(lines) + "\n")
        per: dict[str, list[dict[str, float]]] = {"memory": [], "spool": []}
        jobs: dict[str, list[tuple[float, float]]] = {"memory": [], "spool": []}
        for round_ in range(args.rounds):
            for label in ("memory", "spool"):
                env = _env(tmp, label == "spool")
                port = free_port()
                cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
                with running(cmd, env, port=port, timeout=120) as base:
                    ms = _latencies(base, key, args.requests)
                    per[label].append({"p50": _pct(ms, 0.5), "p99": _pct(ms, 0.99)})
                    if label == "spool":
                        for _ in range(args.jobs):
                            jobs["spool"].append(
                                _job_seconds(env, base, key, tmp / "job.jsonl", 60)
                            )
                    elif round_ == 0:
                        jobs["memory"].append(_job_seconds(env, base, key, tmp / "job.jsonl", 10))
                print(label, per[label][-1], jobs[label][-3:], flush=True)
        for label, rows in per.items():
            results[label] = {
                "rounds": rows,
                "p50_ms": round(statistics.median(r["p50"] for r in rows), 2),
                "p99_ms": round(statistics.median(r["p99"] for r in rows), 2),
                # None: not done within the cap (10 s without the spool).
                "submitjob_to_done_s": [_s(total) for total, _ in jobs[label]],
                "queued_to_done_s": [_s(after) for _, after in jobs[label]],
            }
    out = ROOT / "bench" / "results" / "embedded_broker.json"
    with contextlib.suppress(OSError):
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
