from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from inference import (
    backpressure,
    canary,
    dispatch,
    lane,
    replies,
    router,
    selectors,
    serving,
    shadows,
    streams,
    version_health,
)
from inference.builtin import DIGITS_OPTIONS, DIGITS_SCHEMA, digits_build
from inference.lane import Lane, alive_key, held_key, lane_key
from inference.models import Model, ModelVersion
from inference.redis_client import client
from inference.selectors import VersionRoute
from inference.services import version_register
from inference.tests.fakes import DOUBLER, X_SCHEMA, Doubler


@pytest.fixture(autouse=True)
def _isolated_inference(settings: Any, tmp_path: Any) -> Iterator[None]:
    """Artifacts in a temporary MEDIA_ROOT; an empty model cache and embedded state."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    serving.model_cache().clear()
    serving._specs.clear()
    streams._specs.clear()
    backpressure._local.clear()
    replies._local._box.clear()
    selectors._forget_all()
    router.forget_breakers()
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
    serving.model_cache().clear()
    serving._specs.clear()
    streams._specs.clear()
    selectors._forget_all()
    router.forget_breakers()


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
        validator=None,
        fast_validator=None,
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


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll ``check`` until it holds (an answer that arrives on another thread)."""
    give_up = time.monotonic() + timeout
    while not check():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


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
