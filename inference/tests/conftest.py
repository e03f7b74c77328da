from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest

from inference import backpressure, replies, serving, streams
from inference.builtin import DIGITS_OPTIONS, DIGITS_SCHEMA, digits_build
from inference.models import Model, ModelVersion
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
    Doubler.reset()
    yield
    serving.model_cache().clear()
    serving._specs.clear()
    streams._specs.clear()


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
