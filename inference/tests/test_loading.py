"""A model that loads while it is asked (issue 16): a request whose deadline passes during its
model's load waits for the load within ``INFERENCE_LOAD_ALLOWANCE_SECONDS`` or gets 503
``model-loading`` — never a 504 because of the load; and an engine installed while the platform
runs is found without a restart."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from inference.catalog import selectors
from inference.runtimes import base as runtimes_base
from inference.tests.conftest import make_version
from inference.tests.fakes import SlowLoader
from inference.worker import loading, predict
from plumbing import presence

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(settings: Any) -> Any:
    """A worker of this test on a queue of its own: embedded, a thread of this process; on
    Redis the same thread consuming Redis (the web half waits for its answer either way)."""
    from plumbing.embedded import start_worker

    queue = f"q{uuid.uuid4().hex[:10]}"
    settings.INFERENCE_QUEUES = [*settings.INFERENCE_QUEUES, queue]
    settings.INFERENCE_PRELOAD = False
    settings.INFERENCE_BATCH_LANE = False  # the lane runs in `celery worker` processes only
    presence.forget_claims()
    running = start_worker(queues=[queue], concurrency=2)
    give_up = time.monotonic() + 10
    while not presence.consumers([queue])[queue] and time.monotonic() < give_up:
        time.sleep(0.05)
    yield queue
    running.stop(in_sighandler=False)


def _slow(queue: str, load_sleep: float) -> None:
    SlowLoader.loads = 0
    make_version(
        queue=queue,
        options={"handler": "inference.tests.fakes.SlowLoader", "load_sleep": load_sleep},
    )


def _infer(api: Any, timeout_ms: int) -> tuple[float, Any]:
    started = time.monotonic()
    response = api.post(
        "/v1/models/doubler/infer", {"input": {"x": 3}, "timeout_ms": timeout_ms}, format="json"
    )
    return time.monotonic() - started, response


def test_a_request_waits_for_a_load_longer_than_its_deadline(api: Any, worker: str, settings):
    settings.INFERENCE_LOAD_ALLOWANCE_SECONDS = 10
    _slow(worker, load_sleep=2.5)
    took, response = _infer(api, timeout_ms=1000)  # the load takes 2.5 times the deadline
    assert response.status_code == 200, response.content
    assert response.json()["output"] == {"y": 6}
    assert 2.3 < took < 8, took
    assert SlowLoader.loads == 1
    took, response = _infer(api, timeout_ms=1000)  # loaded: the deadline alone again
    assert response.status_code == 200 and took < 1, (took, response.content)


def test_past_the_allowance_a_loading_model_is_a_503_with_retry_after(
    api: Any, worker: str, settings: Any
) -> None:
    settings.INFERENCE_LOAD_ALLOWANCE_SECONDS = 0.5
    _slow(worker, load_sleep=3)
    took, response = _infer(api, timeout_ms=500)
    assert response.status_code == 503, response.content
    problem = response.json()
    assert problem["type"] == "urn:sluice:problem:model-loading"
    assert "still loading" in problem["detail"]
    assert response["Retry-After"] == "1"
    assert 0.9 < took < 2.5, took  # the deadline plus the allowance, not the load's 3 s


def _write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(source)


@pytest.fixture
def late_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on ``sys.path`` where a test "installs" modules while it runs."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(runtimes_base, "ENGINE_RECHECK_SECONDS", 0.2)
    runtimes_base.forget_engines()
    return tmp_path


def test_an_engine_installed_while_running_is_found_without_a_restart(
    api: Any, eager: None, late_modules: Path
) -> None:
    engine = f"sluice_late_engine_{uuid.uuid4().hex[:8]}"
    make_version(options={"handler": "inference.tests.fakes.Doubler", "requires": [engine]})
    before = api.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json")
    assert before.status_code == 503, before.content
    assert f"{engine} is not installed" in before.json()["detail"]
    _write_module(late_modules, engine, "VERSION = 1\n")  # pip install, while serving
    time.sleep(1.3)  # past the recheck interval and the routing table's second
    after = api.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json")
    assert after.status_code == 200, after.content
    assert after.json()["output"] == {"y": 2}


def test_a_handler_whose_import_fails_then_succeeds_serves_once_it_imports(
    api: Any, eager: None, late_modules: Path
) -> None:
    module = f"sluice_late_handler_{uuid.uuid4().hex[:8]}"
    make_version(options={"handler": f"{module}.Tripler"})
    before = api.post("/v1/models/doubler/infer", {"input": {"x": 2}}, format="json")
    assert before.status_code == 503, before.content
    assert f"handler module {module} is not installed" in before.json()["detail"]
    _write_module(
        late_modules,
        module,
        "class Tripler:\n"
        "    def __init__(self, *, options, artifact):\n"
        "        pass\n"
        "    def predict(self, batch):\n"
        "        return [{'y': item['x'] * 3} for item in batch]\n",
    )
    time.sleep(1.3)
    after = api.post("/v1/models/doubler/infer", {"input": {"x": 2}}, format="json")
    assert after.status_code == 200, after.content
    assert after.json()["output"] == {"y": 6}
    sys.modules.pop(module, None)


def test_late_items_are_kept_only_while_they_wait_for_a_load(settings: Any) -> None:
    settings.INFERENCE_LOAD_ALLOWANCE_SECONDS = 30
    version = make_version(
        options={"handler": "inference.tests.fakes.SlowLoader", "load_sleep": 1.0}
    )
    assert predict.load_grace(version.pk) == 0  # not loading here: late work is dropped
    assert not loading.in_progress(version.pk)
    asked = time.monotonic()
    loader = threading.Thread(
        target=predict.model_cache().get, args=(selectors.version_spec(version.pk),)
    )
    loader.start()
    time.sleep(0.5)
    assert predict.load_grace(version.pk) == 30  # queued behind the load: kept
    assert loading.in_progress(version.pk)  # web processes see it loading
    loader.join()
    loaded = predict.model_cache().get(selectors.version_spec(version.pk))
    assert predict.load_grace(version.pk, since=asked, loaded=loaded) == 30  # waited for it
    assert predict.load_grace(version.pk, since=time.monotonic(), loaded=loaded) == 0
    assert predict.load_grace(version.pk) == 0
    assert loading.in_progress(version.pk)  # for a moment after: the answers are on their way
    assert loading.in_progress(version.pk, since=time.time() - 5)  # a request it held up
    assert not loading.in_progress(version.pk, since=time.time())  # one that came after
    time.sleep(loading.LINGER_SECONDS + 0.1)
    assert not loading.in_progress(version.pk)
