"""``make fuzz``: schemathesis against ``/api/schema/`` of a real stack, with a valid key.

Starts a stack of its own — a database of its own; with ``REDIS_URL`` gunicorn and a Celery
worker (the production shape), without it ``manage.py serve`` (the embedded default's one
process, daphne with its in-process worker) — loads the demo, seeds what the paths need to
reach real objects (the models that can serve here, a finished job, one with a dead task,
their streams, a second key), then runs every operation of the schema, none excluded, through
schemathesis' coverage, fuzzing (at least ``--examples`` generated cases per operation, valid
and invalid) and stateful phases, checking that no answer is a 5xx. Rate limits are off in the
stack (they would answer 429 instead of exercising the code).

Streaming answers (Server-Sent Events, NDJSON followers, the MJPEG preview) need no
exclusion: the seeded streams have ended, the jobs the run creates end within seconds, and
schemathesis reads at most three events of an event stream; a request still running after the
run's request timeout (90 s) is a failure, not a pass.

    python -m testing.fuzz [--examples 50] [--seed N] [--server gunicorn|serve|uvicorn]

Exits with schemathesis' status (0: no failure). The test suite runs a bounded run
(config/tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "true")  # this process only reads settings; the stack's are set

import django

django.setup()

import httpx  # noqa: E402
from django.conf import settings  # noqa: E402

logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per seeding request otherwise

from testing.processes import (  # noqa: E402
    ROOT,
    celery_worker,
    free_port,
    gunicorn,
    manage,
    own_database,
    running,
    server_env,
    uvicorn,
)


@dataclass(frozen=True)
class Result:
    returncode: int
    output: str
    generated: int
    passed: int
    operations: int  # tested
    total: int  # in the schema


def _wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"seed job {job_id} did not finish")
        time.sleep(0.5)


def seed(base: str, key: str) -> dict[str, Any]:
    """Values for the path parameters: the models that can serve here (an engine that is not
    installed answers 503 by design), jobs (one with a dead task) and their streams; and a
    second key to revoke."""
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as client:
        listed = client.get("/v1/models").json()["data"]
        models = [model["id"] for model in listed if model["available"]]
        good = client.post(
            "/v1/jobs", json={"model": "digits", "inputs": [{"pixels": [0.0] * 64}] * 3}
        )
        dead = client.post("/v1/jobs", json={"model": "digits", "inputs": [{"pixels": "x"}]})
        for made in (good, dead):
            made.raise_for_status()
            _wait_job(client, made.json()["id"])
        client.post("/v1/keys", json={"name": "fuzz-other", "scopes": ["infer"]}).raise_for_status()
    jobs = [good.json()["id"], dead.json()["id"]]
    streams = [f"job-{job.replace('-', '')}" for job in jobs]
    return {"models": models, "jobs": jobs, "streams": streams}


def config(seeded: dict[str, Any], *, examples: int, request_timeout: float) -> str:
    """schemathesis.toml of the run: real values for the path parameters most of the time,
    generated ones the rest."""

    def values(items: Any) -> str:
        return "[" + ", ".join(f'"{v}"' for v in items) + "]"

    return f"""
request-timeout = {request_timeout}
max-stream-events = 3

[cache]
enabled = false

[generation]
max-examples = {examples}
database = "none"

[phases.stateful]
max-steps = 6

[dictionaries.models]
values = {values(seeded["models"])}

[dictionaries.jobs]
values = {values(seeded["jobs"])}

[dictionaries.streams]
values = {values(seeded["streams"])}

[dictionaries.versions]
values = ["1"]

[parameters]
"path.name" = {{ dictionary = "models", probability = 0.8 }}
"path.version" = {{ dictionary = "versions", probability = 0.8 }}
"path.job_id" = {{ dictionary = "jobs", probability = 0.8 }}
"path.stream_id" = {{ dictionary = "streams", probability = 0.8 }}
"query.model" = {{ dictionary = "models", probability = 0.5 }}
"body.model" = {{ dictionary = "models", probability = 0.8 }}
"body.job" = {{ dictionary = "jobs", probability = 0.8 }}
"""


@contextlib.contextmanager
def stack(server: str, workdir: Path) -> Iterator[tuple[str, str]]:
    """The processes under test, with the demo loaded: yields the base URL and the key."""
    with contextlib.ExitStack() as processes:
        database = processes.enter_context(own_database(workdir))
        env = server_env(
            database,
            RATELIMIT_ENABLE="false",
            # A request that names no deadline may take as long as any may: a loaded machine
            # generating text for garbage input is slow, not broken (one naming a short
            # deadline still gets its 504, and fails the run).
            INFERENCE_DEFAULT_TIMEOUT_MS="60000",
            MEDIA_ROOT=str(workdir / "media"),
            MEDIA_FIRST_EVENT_TIMEOUT_SECONDS="5",
        )
        if settings.REDIS_URL:  # runs once every process below has stopped
            processes.callback(_forget_keys, env["REDIS_KEY_PREFIX"])
        manage(env, "migrate", "--no-input", "-v0")
        key = manage(env, "demo", "--key-file", str(workdir / "key")).splitlines()[-1]
        port = free_port()
        serve = [sys.executable, "manage.py", "serve", "--port", str(port)]
        if not settings.REDIS_URL:  # the embedded default: one process, its worker inside
            command = serve
        else:
            processes.enter_context(
                celery_worker(env, queues="celery,cpu,jobs", pool="threads", concurrency=4)
            )
            command = {
                "gunicorn": gunicorn(port, threads=8),
                "uvicorn": uvicorn(port),
                "serve": [*serve, "--no-worker"],
            }[server]
        base = processes.enter_context(running(command, env, port=port, timeout=120))
        yield base, key


def _forget_keys(prefix: str) -> None:
    """Delete the stack's Redis keys (and only those: they carry its prefix)."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    for name in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(name)
    client.close()


def run(
    *,
    examples: int = 50,
    seed_value: int | None = None,
    server: str = "gunicorn",
    workers: int = 2,
    request_timeout: float = 90,
    workdir: Path | None = None,
) -> Result:
    """One fuzz run against a fresh stack."""
    with contextlib.ExitStack() as cleanup:
        if workdir is None:
            workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="fuzz-")))
        base, key = cleanup.enter_context(stack(server, workdir))
        toml = workdir / "schemathesis.toml"
        toml.write_text(config(seed(base, key), examples=examples, request_timeout=request_timeout))
        own_prefix = key.removeprefix("sk_live_").partition(".")[0]
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(toml),
            "--no-color",
            "run",
            f"{base}/api/schema/?format=json",
            "--header",
            f"X-API-Key: {key}",
            "--checks",
            "not_a_server_error",
            "--workers",
            str(workers),
            "--report",
            "junit",
            "--report-dir",
            str(workdir / "report"),
        ]
        if seed_value is not None:
            command += ["--seed", str(seed_value)]
        done = subprocess.run(
            command,
            cwd=workdir,  # hypothesis keeps its caches in the working directory
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))
                ),
                "SCHEMATHESIS_HOOKS": "testing.fuzz_hooks",
                "SLUICE_FUZZ_OWN_PREFIX": own_prefix,
            },
            capture_output=True,
            text=True,
            check=False,
        )
    output = done.stdout + done.stderr
    generated = re.search(r"(\d+) generated", output)
    passed = re.search(r"(\d+) passed\n", output[output.rfind("Test cases:") :])
    selected = re.search(r"Selected: \d+/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    return Result(
        returncode=done.returncode,
        output=output,
        generated=int(generated[1]) if generated else 0,
        passed=int(passed[1]) if passed else 0,
        operations=int(tested[1]) if tested else 0,
        total=int(selected[1]) if selected else -1,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=50, help="generated cases per operation")
    parser.add_argument("--seed", type=int, default=None, help="schemathesis' random seed")
    parser.add_argument(
        "--server",
        choices=("gunicorn", "serve", "uvicorn"),
        default="gunicorn",
        help="the web process under test with REDIS_URL (without it: manage.py serve)",
    )
    parser.add_argument("--workers", type=int, default=2, help="concurrent schemathesis workers")
    args = parser.parse_args(argv)
    result = run(
        examples=args.examples, seed_value=args.seed, server=args.server, workers=args.workers
    )
    print(result.output)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
