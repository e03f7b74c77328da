from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from inference.models import ModelVersion
from inference.tests.conftest import (  # noqa: F401 - fixtures shared with the inference tests
    _isolated_inference,
    digits,
    eager,
    make_version,
)
from inference.tests.fakes import BROKEN
from jobs import runner


@pytest.fixture
def doubler(db: None) -> ModelVersion:
    return make_version()


@pytest.fixture
def broken(db: None) -> ModelVersion:
    return make_version("broken", options=BROKEN)


@pytest.fixture
def run_jobs(
    eager: None,  # noqa: F811
    django_capture_on_commit_callbacks: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Any]:
    """Run ``fn`` and then every chunk it queued, in this thread (eager Celery), including
    the chunks those queue in turn; retries run at once (backoff is not waited for)."""
    monkeypatch.setattr(runner, "backoff_seconds", lambda attempt: 0.0)

    def run(fn: Callable[[], Any]) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return fn()

    return run


@pytest.fixture
def digits_pixels() -> list[list[float]]:
    from sklearn.datasets import load_digits

    return [list(map(float, row)) for row in load_digits().data[:200]]
