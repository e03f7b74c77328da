"""``manage.py runserver`` — what every Django developer starts first — runs no worker: it
says so at start, and an inference request gets 503 ``no-worker`` at once instead of hanging
until its deadline (a real process, on the embedded default or PostgreSQL + Redis)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from inference.tests.fakes import X_SCHEMA
from testing.processes import ROOT, free_port, manage, own_database, server_env, stop

pytestmark = pytest.mark.e2e


def test_runserver_warns_and_refuses_inference_at_once(tmp_path: Path) -> None:
    with own_database(tmp_path) as url:
        env = server_env(url, MEDIA_ROOT=str(tmp_path / "media"), INFERENCE_PRELOAD="false")
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "dev")
        key = manage(env, "createapikey", "--tenant", "dev", "--scopes", "infer")
        manage(
            env,
            "registermodel",
            "doubler",
            "1",
            "--runtime",
            "python",
            "--handler",
            "inference.tests.fakes.Doubler",
            "--input-schema",
            json.dumps(X_SCHEMA),
            "--activate",
        )
        port = free_port()
        cmd = [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
        log_path = tmp_path / "runserver.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            base = f"http://127.0.0.1:{port}"
            give_up = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text()[-2000:]
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < give_up, log_path.read_text()[-2000:]
                time.sleep(0.2)
            url = f"{base}/v1/models/doubler/infer"
            body = {"input": {"x": 1}, "timeout_ms": 10_000}
            headers = {"X-API-Key": key}
            httpx.post(url, json=body, headers=headers, timeout=30)  # the first imports views
            started = time.monotonic()
            response = httpx.post(url, json=body, headers=headers, timeout=30)
            took = time.monotonic() - started
            ready = httpx.get(f"{base}/readyz", timeout=30)
        finally:
            stop(proc, grace=10)
    output = log_path.read_text()
    assert "WARNING: runserver starts no worker" in output, output[-2000:]
    assert "queues cpu, gpu are answered 503 no-worker" in output
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:sluice:problem:no-worker"
    assert "No worker is serving queue cpu" in response.json()["detail"]
    assert response.headers["retry-after"] == "1"
    assert took < 1, took
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "cpu" in ready.json()["without_workers"]
