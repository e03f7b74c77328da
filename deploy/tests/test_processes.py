"""Each process of docker-compose.yml, started natively with its compose command."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from deploy.tests.conftest import (
    REPO,
    answers,
    compose,
    compose_default,
    free_port,
    program,
    spawn,
    wait_for,
)
from deploy.tests.test_dockerfile import stage

pytestmark = pytest.mark.e2e


def command(service: str) -> list[str]:
    """The service's compose command, defaults filled in, with this venv's executables."""
    cmd = [compose_default(str(arg)) for arg in compose()["services"][service]["command"]]
    return [program(cmd[0]), *cmd[1:]]


def replace_option(cmd: list[str], option: str, value: str) -> list[str]:
    i = cmd.index(option)
    return [*cmd[: i + 1], value, *cmd[i + 2 :]]


def request_lines(output: str) -> list[dict[str, object]]:
    lines = []
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "sluice.access":
                lines.append(record)
    return lines


def test_it_serves_healthz_and_readyz_under_gunicorn(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {**process_env, "PORT": str(port), "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2"}
    with spawn(command("web"), env, tmp_path / "gunicorn.log") as web:
        base = f"http://127.0.0.1:{port}"
        wait_for(answers(f"{base}/healthz"), running=web, what="gunicorn /healthz")
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        # The image's HEALTHCHECK, run as the container would (python on PATH, PORT set).
        check = json.loads(stage("web").last("HEALTHCHECK").split("CMD", 1)[1])
        assert check[0] == "python"
        result = subprocess.run(
            [sys.executable, *check[1:]], env=env, capture_output=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
        output = web.output()

    assert "Using worker: gthread" in output
    # One JSON request line per request from the app, and no access log line from gunicorn.
    paths = [line["path"] for line in request_lines(output)]
    assert paths.count("/healthz") >= 1 and "/readyz" in paths
    assert '"GET /healthz HTTP/1.1" 200' not in output


def test_it_serves_healthz_under_daphne(process_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    cmd = replace_option(command("asgi"), "--port", str(port))
    with spawn(cmd, process_env, tmp_path / "daphne.log") as asgi:
        wait_for(answers(f"http://127.0.0.1:{port}/healthz"), running=asgi, what="daphne")
        response = httpx.get(
            f"http://127.0.0.1:{port}/healthz", headers={"X-Request-ID": "probe-1"}, timeout=5
        )
    assert response.json() == {"status": "ok"}
    assert response.headers["X-Request-ID"] == "probe-1"


def test_it_keeps_celery_beat_running(process_env: dict[str, str], tmp_path: Path) -> None:
    schedule = tmp_path / "celerybeat-schedule"
    cmd = replace_option(command("beat"), "--schedule", str(schedule))
    with spawn(cmd, process_env, tmp_path / "beat.log") as beat:
        wait_for(lambda: "beat: Starting" in beat.output(), running=beat, what="beat start")
        time.sleep(3)
        assert beat.alive(), beat.output()
    # The schedule went where --schedule said (the one writable place in the image).
    assert list(tmp_path.glob("celerybeat-schedule*")), beat.output()


@pytest.mark.redis
def test_it_answers_the_liveness_ping_from_a_celery_worker(
    process_env: dict[str, str], tmp_path: Path
) -> None:
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL: a worker's ping travels over the broker")
    # A node name of its own, so another worker on this machine cannot answer for it.
    hostname = f"deploy-test-{uuid.uuid4().hex[:8]}"
    cmd = [*command("worker-cpu"), "--hostname", f"celery@{hostname}"]
    # The worker's health check (the same command as the Kubernetes liveness probe).
    probe = compose()["services"]["worker-cpu"]["healthcheck"]["test"][1]
    probe_cmd = shlex.split(probe.replace("$$HOSTNAME", hostname))
    probe_cmd[0] = program(probe_cmd[0])

    def pings() -> bool:
        result = subprocess.run(
            probe_cmd, cwd=REPO, env=process_env, capture_output=True, timeout=60, check=False
        )
        return result.returncode == 0 and b"pong" in result.stdout

    with spawn(cmd, process_env, tmp_path / "worker.log") as worker:
        wait_for(
            lambda: "ready" in worker.output(), running=worker, what="worker start", timeout=60
        )
        wait_for(pings, running=worker, what="inspect ping", timeout=60)
