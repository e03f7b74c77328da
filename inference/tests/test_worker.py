from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from inference.runtimes import RuntimeUnavailable, VersionSpec
from inference.tests.conftest import make_version
from inference.tests.fakes import DOUBLER, PICKY, Doubler
from inference.transport import replies
from inference.transport.replies import reply_publish, reply_wait
from inference.worker import outcomes, predict
from inference.worker.cache import ModelCache


def _spec(id: int = 1, checksum: str = "a", **options) -> VersionSpec:
    return VersionSpec(
        id=id,
        model="m",
        version=str(id),
        runtime="python",
        checksum=checksum,
        options={**DOUBLER, **options},
    )


def test_it_loads_a_version_once_under_concurrency_and_warms_it_up() -> None:
    cache = ModelCache(max_models=4, read_artifact=lambda spec: None)
    with ThreadPoolExecutor(max_workers=8) as pool:
        entries = list(pool.map(lambda _: cache.get(_spec()), range(16)))
    assert cache.loads == 1 and len({id(e) for e in entries}) == 1
    assert Doubler.warmed == 1


def test_it_evicts_the_least_recently_used_model_and_closes_it() -> None:
    cache = ModelCache(max_models=2, read_artifact=lambda spec: None)
    cache.get(_spec(1))
    cache.get(_spec(2))
    cache.get(_spec(1))  # 2 is now least recently used
    cache.get(_spec(3))
    assert [s.id for s in cache.loaded()] == [1, 3]
    assert Doubler.closed == 1
    cache.get(_spec(1, checksum="b"))  # a new artifact is a new entry
    assert cache.loads == 4


def test_it_reports_a_missing_handler_as_unavailable() -> None:
    cache = ModelCache(max_models=2, read_artifact=lambda spec: None)
    with pytest.raises(RuntimeUnavailable, match="not installed"):
        cache.get(_spec(handler="sluice_missing_pkg.Handler"))


def test_it_delivers_replies_across_threads_and_times_out() -> None:
    rid = uuid.uuid4().hex
    threading.Timer(0.05, reply_publish, args=(rid, {"ok": True})).start()
    assert reply_wait(rid, 2) == {"ok": True}
    assert reply_wait(uuid.uuid4().hex, 0.05) is None
    assert reply_wait(rid, 0) is None


@pytest.mark.django_db(transaction=True)
def test_it_preloads_the_active_versions_of_its_queues() -> None:
    make_version("a")
    make_version("b", queue="gpu")
    draft = make_version("c", activate=False)
    assert predict.preload({"cpu"}) == ["a:1"]
    assert [s.label for s in predict.model_cache().loaded()] == ["a:1"]
    assert Doubler.warmed == 1
    assert draft.pk not in {s.id for s in predict.model_cache().loaded()}


def test_it_preloads_when_a_celery_worker_is_ready(monkeypatch) -> None:
    from types import SimpleNamespace

    from inference import apps

    seen: list[set[str]] = []
    done = threading.Event()

    def fake_preload(queues: set[str]) -> list[str]:
        seen.append(queues)
        done.set()
        return []

    monkeypatch.setattr(predict, "preload", fake_preload)
    monkeypatch.setattr(outcomes, "outage_over", lambda queues: [])
    consumer = SimpleNamespace(task_consumer=SimpleNamespace(queues=[SimpleNamespace(name="cpu")]))
    apps._preload_on_worker_ready(sender=consumer)
    assert done.wait(5) and seen == [{"cpu"}]


@pytest.mark.django_db
def test_an_input_that_fails_the_engine_does_not_fail_its_batch(monkeypatch, caplog) -> None:
    """A batch of 16 with one input the engine raises on: fifteen answers, one failure that
    blames that input, with the engine's text for the operator only."""
    version = make_version("picky", options=PICKY, max_batch_size=16)
    sent: dict[str, dict] = {}
    monkeypatch.setattr(
        replies, "batch_reply_publish", lambda to, batch, answers, **kw: sent.update(answers)
    )
    items = [(f"r{x}", {"x": x}, time.time() + 10) for x in range(16)]
    replies.predict_batch(
        version_id=version.pk, queue="cpu", items=items, reply_to="inbox", batch_id="b"
    )
    assert [sent[f"r{x}"]["output"]["y"] for x in range(16) if x != 13] == [
        2 * x for x in range(16) if x != 13
    ]
    failed = sent["r13"]
    assert (failed["ok"], failed["status"], failed["outcome"]) == (False, 500, "input_error")
    assert failed["error"] == "The model failed on this input."
    assert failed["internal"] == "IndexError: index out of range in self"
    assert "requests r13" in caplog.text  # logged with the request id
