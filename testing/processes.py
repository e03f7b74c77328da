"""Helpers for end-to-end tests: a database of the test's own, and real server processes.

Used by every app's e2e tests; nothing here runs in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def own_database(tmp_path: Path) -> Iterator[str]:
    """A fresh database URL for server processes: a new PostgreSQL database when the suite runs
    on PostgreSQL (dropped afterwards), else a SQLite file under ``tmp_path``."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        yield f"sqlite:///{tmp_path / 'e2e.sqlite3'}"
        return
    import psycopg

    name = f"sluice_e2e_{uuid.uuid4().hex[:10]}"
    params = {"host": db["HOST"], "port": db["PORT"] or 5432, "user": db["USER"]}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{name}"
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """Production-like settings for a child process; Redis only when the suite has it."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DEBUG="false",
        SECRET_KEY="e2e-secret-key-" + "x" * 40,
        SECURE_SSL_REDIRECT="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=database_url,
        LOG_LEVEL="WARNING",
    )
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
        env["REDIS_KEY_PREFIX"] = f"{settings.REDIS_KEY_PREFIX}:e2e{uuid.uuid4().hex[:8]}"
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """``manage.py ARGS`` in a child with ``env``: its output, or RuntimeError with its end."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout.strip()


def migrate_with_static(env: dict[str, str]) -> None:
    """A fresh database migrated, and the static files a page served without DEBUG needs
    collected (as the production image does), less the API docs' and REST framework's, which
    the browser tests never load (compressing them takes minutes on a busy machine)."""
    manage(env, "migrate", "--no-input", "-v0")
    manage(
        env,
        "collectstatic",
        "--no-input",
        "-v0",
        "--ignore",
        "drf_spectacular_sidecar",
        "--ignore",
        "rest_framework",
    )


@contextlib.contextmanager
def running(
    cmd: list[str], env: dict[str, str], *, port: int, timeout: float = 30
) -> Iterator[str]:
    """Start ``cmd``, wait until ``/healthz`` answers on ``port``, yield the base URL, stop it."""
    with running_process(cmd, env, port=port, timeout=timeout) as (base, _):
        yield base


@contextlib.contextmanager
def running_process(
    cmd: list[str], env: dict[str, str], *, port: int, timeout: float = 30
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``running``, also yielding the process (to measure it)."""
    # A file, not a pipe: a chatty child must never block on a full pipe nobody reads.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{cmd[0]} exited: {log.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd} did not serve /healthz within {timeout}s")
            time.sleep(0.2)
        yield base, proc
    finally:
        stop(proc, grace=10)
        log.close()


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group (a server and its workers), MiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def stop(proc: subprocess.Popen[bytes], *, grace: float) -> None:
    """SIGTERM to the process group, SIGKILL if it is still there after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def gunicorn(port: int, *, threads: int = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi",
        "-b",
        f"127.0.0.1:{port}",
        "-k",
        "gthread",
        "--threads",
        str(threads),
        "-w",
        "1",
    ]


def uvicorn(port: int) -> list[str]:
    """The unary inference server (``config.unary``) as the deployment runs it."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "config.unary:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--lifespan",
        "off",
        "--no-proxy-headers",
    ]


@contextlib.contextmanager
def celery_worker(
    env: dict[str, str],
    *,
    queues: str,
    pool: str = "prefork",
    concurrency: int = 2,
    hostname: str | None = None,
    log_path: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery -A config worker`` until the block ends, once it says it is ready.
    ``log_path``: where its output goes (appended, kept for the test to read); ``hostname``:
    its node name (a worker started again under the same name is "the same worker")."""
    with contextlib.ExitStack() as cleanup:
        if log_path is None:
            log_path = Path(cleanup.enter_context(tempfile.NamedTemporaryFile(suffix=".log")).name)
        ready_before = log_path.read_bytes().count(b"ready.") if log_path.exists() else 0
        name = ["--hostname", hostname] if hostname else []
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "--queues",
                    queues,
                    "--pool",
                    pool,
                    "--concurrency",
                    str(concurrency),
                    *name,
                    "--loglevel",
                    "INFO",
                    "--without-heartbeat",
                    "--without-mingle",
                    "--without-gossip",
                ],
                cwd=ROOT,
                env={**env, "LOG_LEVEL": "INFO", "LOG_FORMAT": "text", "WORKER_METRICS_PORT": "0"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        cleanup.callback(stop, proc, grace=15)
        deadline = time.monotonic() + 60
        while log_path.read_bytes().count(b"ready.") <= ready_before:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
