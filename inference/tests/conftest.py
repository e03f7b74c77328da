from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

from inference.catalog import canary, selectors, version_health
from inference.catalog.selectors import VersionRoute
from inference.models import Model, ModelVersion
from inference.registry.builtin import DIGITS_OPTIONS, DIGITS_SCHEMA, digits_build
from inference.registry.services import version_register
from inference.rules import breaker
from inference.rules.input_schema import validator_for
from inference.tests.fakes import DOUBLER, X_SCHEMA, Doubler
from inference.transport import admission, dispatch, lane, replies, shadows
from inference.transport.lane import Lane, alive_key, held_key, lane_key
from inference.transport.redis_client import client
from inference.worker import predict
from testing.processes import celery_worker, free_port, gunicorn, running, server_env, uvicorn


@pytest.fixture(autouse=True)
def _isolated_inference(settings: Any, tmp_path: Any) -> Iterator[None]:
    """Artifacts in a temporary MEDIA_ROOT; an empty model cache and embedded state."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    predict.model_cache().clear()
    predict._specs.clear()
    admission._local.clear()
    replies._local._box.clear()
    selectors._forget_all()
    breaker.forget_breakers()
    dispatch._collectors.clear()
    dispatch._loop_collectors.clear()
    shadows._pairs.clear()
    shadows._tallies.clear()
    canary._watched.clear()
    Doubler.reset()
    version_health.discard()
    yield
    canary._watched.clear()  # this process's watcher judges nothing of the next test's
    version_health.discard()
    predict.model_cache().clear()
    predict._specs.clear()
    selectors._forget_all()
    breaker.forget_breakers()


@pytest.fixture
def eager() -> Iterator[None]:
    """Tasks run inside ``apply_async`` (the worker half runs in the test's thread)."""
    from config.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@functools.cache
def _digits_onnx() -> bytes:
    return digits_build().onnx


def make_version(
    name: str = "doubler",
    version: str = "1",
    *,
    options: dict[str, Any] | None = None,
    activate: bool = True,
    **kwargs: Any,
) -> ModelVersion:
    kwargs.setdefault("input_schema", X_SCHEMA)
    row = version_register(
        model_name=name,
        version=version,
        runtime=ModelVersion.Runtime.PYTHON,
        runtime_options=options or DOUBLER,
        actor="test",
        **kwargs,
    )
    if activate:
        row.activate(actor="test")
        row.refresh_from_db()
    return row


@pytest.fixture
def doubler(db: None) -> ModelVersion:
    return make_version()


@pytest.fixture
def digits(db: None) -> ModelVersion:
    row = version_register(
        model_name="digits",
        version="1",
        runtime=ModelVersion.Runtime.ONNX,
        artifact=_digits_onnx(),
        artifact_filename="digits.onnx",
        runtime_options=DIGITS_OPTIONS,
        input_schema=DIGITS_SCHEMA,
        task=Model.Task.CLASSIFICATION,
        actor="test",
    )
    row.activate(actor="test")
    row.refresh_from_db()
    return row


@pytest.fixture
def digits_onnx() -> bytes:
    return _digits_onnx()


def make_route(
    *,
    version_id: int | None = None,
    queue: str = "",
    max_batch_size: int = 8,
    max_delay_ms: int = 200,
) -> VersionRoute:
    """A version's route without the registry (``version_id`` when the worker's half must
    find the version in the database)."""
    return VersionRoute(
        id=version_id if version_id is not None else int(time.time_ns() % 10**9),
        version="1",
        # A queue of this test only (the Redis pass shares the server).
        queue=queue or f"q{uuid.uuid4().hex[:10]}",
        input_schema={},
        validator=validator_for({}),
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
    )


def ask(route: VersionRoute, x: int, timeout: float = 5) -> dict[str, Any] | None:
    """One request ``{"x": x}`` through the web side's batching, as the view sends it."""
    rid = uuid.uuid4().hex
    pending = dispatch.call(route, {"x": x}, request_id=rid, deadline=time.time() + timeout)
    reply = dispatch.wait(pending, timeout)
    if reply is None:
        dispatch.gave_up(route, pending)
    return reply


def lane_queue() -> str:
    return f"q{uuid.uuid4().hex[:10]}"  # a queue of this test only (the server is shared)


@pytest.fixture
def lanes() -> Any:
    """Lane objects of this test (hostnames of its own), their Redis keys removed after."""
    made: list[Lane] = []
    queues: list[str] = []

    def make(queue: str, hostname: str = "", threads: int = 1) -> Lane:
        queues.append(queue)
        found = Lane(hostname or f"w{uuid.uuid4().hex[:8]}@test", [queue], threads)
        made.append(found)
        return found

    yield make
    for one in made:
        one.stop(timeout=5)
    redis = client()
    for queue in queues:
        redis.delete(lane_key(queue))
        for name in redis.scan_iter(match=held_key(queue, "*")):
            redis.delete(name)
    for one in made:
        redis.delete(alive_key(one.hostname))
        for queue in one.queues:
            redis.srem(lane.workers_key(), held_key(queue, one.hostname))


# --- end to end: real worker and server processes (the PostgreSQL + Redis pass) ---------------


def e2e_database_url() -> str:
    """The test database as a URL a server process can use (PostgreSQL only)."""
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the worker process needs a database it can share (PostgreSQL)")
    auth = quote(db["USER"] or "")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"])
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A worker and a web server sharing this test's database, Redis prefix and MEDIA_ROOT.
    ``@pytest.mark.stack_env(NAME=value)`` adds settings; ``restart_worker()`` kills the worker
    (SIGKILL, mid-task) and starts another with the same name; ``kill_worker()`` and
    ``start_worker()`` do it in two steps (an outage in between); ``stop_worker()`` stops it
    cleanly (SIGTERM)."""
    marker = request.node.get_closest_marker("stack_env")
    env = server_env(
        e2e_database_url(),
        REDIS_KEY_PREFIX=settings.REDIS_KEY_PREFIX,  # the test reads the worker's keys
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        # That prefix is the whole run's: the per-IP counter of 127.0.0.1 is shared by every
        # test here, and their requests together pass the default 100 a minute.
        RATELIMIT_IP_RATE="10000/h",
        **(marker.kwargs if marker else {}),
    )
    port = free_port()
    worker_log = tmp_path / "worker.log"
    hostname = f"e2e-{os.getpid()}-{port}@localhost"

    def start_worker() -> Any:
        return celery_worker(
            env,
            queues="celery,cpu",
            pool="threads",
            concurrency=8,
            hostname=hostname,
            log_path=worker_log,
        )

    with contextlib.ExitStack() as processes:
        worker = processes.enter_context(contextlib.ExitStack())
        proc = worker.enter_context(start_worker())
        base = processes.enter_context(running(gunicorn(port, threads=16), env, port=port))

        def kill_worker() -> None:
            os.killpg(proc.pid, signal.SIGKILL)
            worker.close()

        def stop_worker() -> None:
            worker.close()  # SIGTERM: Celery's warm shutdown, as a deployment stops it

        def start_again() -> None:
            nonlocal proc
            proc = worker.enter_context(start_worker())

        def restart_worker() -> None:
            kill_worker()
            start_again()

        yield {
            "base": base,
            "env": env,
            "worker_log": worker_log,
            "hostname": hostname,
            "restart_worker": restart_worker,
            "kill_worker": kill_worker,
            "stop_worker": stop_worker,
            "start_worker": start_again,
        }


@pytest.fixture
def unary(stack: dict[str, Any]) -> Iterator[str]:
    """The unary inference server (uvicorn, ``config.unary``) beside the stack's gunicorn."""
    port = free_port()
    with running(uvicorn(port), stack["env"], port=port) as base:
        yield base
