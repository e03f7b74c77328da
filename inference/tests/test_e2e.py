"""End to end: a real ``celery worker`` process and a real gunicorn serving HTTP, through Redis
and the PostgreSQL test database. Runs in the PostgreSQL + Redis pass of ``make test``."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.conf import settings
from sklearn.datasets import load_digits

from inference.tests.conftest import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (PostgreSQL + Redis pass)"),
]


def test_it_serves_digits_through_a_real_worker_and_server(stack, key, digits) -> None:
    from inference.models import ModelVersion

    # A wider window than digits' 5 ms, so merging does not hinge on a busy CI machine's timing.
    ModelVersion.objects.filter(pk=digits.pk).update(max_delay_ms=50)
    base, raw = stack["base"], key[1]
    data = load_digits()
    headers = {"X-API-Key": raw}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        listed = client.get("/v1/models").json()
        assert [m["id"] for m in listed["data"]] == ["digits"]
        first = client.post(
            "/v1/models/digits/infer", json={"input": {"pixels": data.data[0].tolist()}}
        )
        assert first.status_code == 200, first.text
        assert first.json()["output"]["label"] == data.target[0]
        bad = client.post("/v1/models/digits/infer", json={"input": {"pixels": [1]}})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "input.pixels"

    def one(n: int) -> dict[str, Any]:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            response = client.post(
                "/v1/models/digits/infer", json={"input": {"pixels": data.data[n].tolist()}}
            )
            assert response.status_code == 200, response.text
            return dict(response.json())

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(32)))
    assert [a["output"]["label"] for a in answers] == list(data.target[:32])
    print("batch sizes seen:", sorted(a["batch_size"] for a in answers))
    # Concurrent requests for one version are merged by the worker's batcher.
    log = stack["worker_log"].read_text()
    assert max(a["batch_size"] for a in answers) > 1, log[-3000:]
    # They travelled on the batch lane, not as Celery task messages.
    assert "batch lane: 8 thread(s) on ['cpu']" in log
    assert "Task inference_predict_batch[" not in log  # Celery logs each task it receives


def test_a_batch_whose_worker_dies_mid_run_is_answered_by_the_next(stack, key, doubler) -> None:
    """The batch lane's redelivery: a worker killed while it holds a batch; the worker that
    takes its place (the same name, as a restarted pod) runs the batch again."""
    from inference.models import ModelVersion
    from inference.transport.lane import held_key
    from inference.transport.redis_client import client

    ModelVersion.objects.filter(pk=doubler.pk).update(
        runtime_options={"handler": "inference.tests.fakes.Doubler", "sleep": 1.5}
    )
    held = held_key("cpu", stack["hostname"])

    def ask() -> httpx.Response:
        with httpx.Client(base_url=stack["base"], headers={"X-API-Key": key[1]}, timeout=60) as c:
            return c.post("/v1/models/doubler/infer", json={"input": {"x": 7}, "timeout_ms": 30000})

    with ThreadPoolExecutor(max_workers=1) as pool:
        asked = pool.submit(ask)
        wait_for(lambda: client().llen(held) == 1, "the worker to hold the batch")
        stack["restart_worker"]()
        response = asked.result(timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == {"y": 14}
    assert "back on the lane" in stack["worker_log"].read_text()
    assert client().llen(held) == 0


def test_it_answers_504_and_drops_work_when_no_worker_is_fast_enough(stack, key, doubler) -> None:
    from inference.models import ModelVersion

    ModelVersion.objects.filter(pk=doubler.pk).update(
        runtime_options={"handler": "inference.tests.fakes.Doubler", "sleep": 0.5}
    )
    with httpx.Client(base_url=stack["base"], headers={"X-API-Key": key[1]}, timeout=30) as c:
        # Loaded first: a request that meets its deadline while its model loads waits for the
        # load (INFERENCE_LOAD_ALLOWANCE_SECONDS); here the engine itself is too slow.
        warm = c.post("/v1/models/doubler/infer", json={"input": {"x": 1}, "timeout_ms": 30000})
        assert warm.status_code == 200, warm.text
        response = c.post("/v1/models/doubler/infer", json={"input": {"x": 1}, "timeout_ms": 200})
    assert response.status_code == 504, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.stack_env(INFERENCE_BATCH_LANE="false")  # requests as Celery task messages
def test_a_worker_with_a_full_prefetch_window_keeps_taking_messages(stack, key, doubler) -> None:
    """Unbatched requests outnumbering the worker's 8 threads fill its prefetch window; each
    finished task must let the next message in at once (config.celery.WakeLoop), not after
    kombu's 10 s timer."""
    from inference.models import ModelVersion

    ModelVersion.objects.filter(pk=doubler.pk).update(
        runtime_options={"handler": "inference.tests.fakes.Doubler", "sleep": 0.05},
        max_batch_size=1,
    )

    def one(x: int) -> float:
        with httpx.Client(base_url=stack["base"], headers={"X-API-Key": key[1]}, timeout=30) as c:
            started = time.monotonic()
            response = c.post("/v1/models/doubler/infer", json={"input": {"x": x}})
            assert response.status_code == 200, response.text
            assert response.json()["output"] == {"y": 2 * x}
            return time.monotonic() - started

    one(0)  # the version is loaded and warm
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        waits = list(pool.map(one, range(32)))
    took = time.monotonic() - started
    print(f"32 requests over 8 worker threads: {took:.2f} s, slowest {max(waits):.2f} s")
    # The version's batches run one at a time in the worker: 32 x 0.05 s. A window that stalls
    # until kombu's timer adds 10 s (once per refill).
    log = stack["worker_log"].read_text()
    assert took < 8, log[-3000:]
    # The setting is the web side's: the worker serves the lane all the same, so a web process
    # set otherwise never strands a batch.
    assert "batch lane: 8 thread(s) on ['cpu']" in log
    assert "Task inference_predict_batch[" in log  # these requests came as Celery tasks


# --- the unary server: the front door on an event loop (inference/api/frontdoor.py) -------------


def _comparable(response: httpx.Response) -> tuple[Any, ...]:
    """What must be the same whichever server answered."""
    kind = response.headers.get("content-type", "")
    body: Any = None
    if kind.startswith("application/"):
        body = response.json()
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in {"id", "latency_ms", "batch_size"}}
            body.pop("instance", None)
    elif kind.startswith("text/event-stream"):
        body = [line.split(":", 1)[0] for line in response.text.splitlines() if line]
    headers = {
        name: response.headers.get(name)
        for name in (
            "content-type",
            "x-sluice-version",
            "ratelimit-limit",
            "www-authenticate",
            "x-content-type-options",
            "x-frame-options",
            "referrer-policy",
            "vary",
            "allow",
        )
    }
    return response.status_code, headers, body, "x-request-id" in response.headers


def test_the_unary_server_answers_every_request_as_gunicorn_does(stack, unary, key, digits):
    """The same requests to gunicorn (the WSGI lane and full stack) and to uvicorn (the loop's
    lane, handing what it does not serve to Django's ASGI handler) get the same answers."""
    pixels = load_digits().data[3].tolist()
    good = {"X-API-Key": key[1]}
    cases: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/v1/models/digits/infer", good, {"input": {"pixels": pixels}}),
        ("POST", "/v1/models/digits/infer", good, {"input": {"pixels": pixels}, "version": "1"}),
        ("POST", "/v1/models/digits/infer", good, {"input": {"pixels": [1]}}),  # 422
        ("POST", "/v1/models/digits/infer", good, {"input": {"pixels": pixels}, "version": "9"}),
        ("POST", "/v1/models/digits/infer", good, b"{not json"),  # 400
        ("POST", "/v1/models/nope/infer", good, {"input": {}}),  # 404
        ("POST", "/v1/models/digits/infer", {"X-API-Key": "sk_bad.key"}, {"input": {}}),  # 401
        ("POST", "/v1/models/digits/infer", {}, {"input": {"pixels": pixels}}),  # no key
        ("GET", "/v1/models/digits/infer", good, None),  # 405
        ("POST", "/v1/models/digits/infer?stream=true", good, {"input": {"pixels": pixels}}),
        ("GET", "/v1/models/digits", good, None),
    ]
    for method, path, headers, body in cases:
        answers = []
        for base in (stack["base"], unary):
            with httpx.Client(base_url=base, timeout=30) as client:
                content = body if isinstance(body, bytes) else None
                answers.append(
                    client.request(
                        method,
                        path,
                        headers={**headers, "Content-Type": "application/json"},
                        content=content,
                        json=None if content is not None or body is None else body,
                    )
                )
        gunicorn_answer, uvicorn_answer = (_comparable(a) for a in answers)
        assert uvicorn_answer == gunicorn_answer, (method, path, answers[1].text)
    assert answers[0].status_code == 200  # the last case, the model's page


def test_the_unary_server_batches_concurrent_requests(stack, unary, key, digits) -> None:
    from inference.models import ModelVersion

    ModelVersion.objects.filter(pk=digits.pk).update(max_delay_ms=50)
    data = load_digits()

    def one(n: int) -> dict[str, Any]:
        with httpx.Client(base_url=unary, headers={"X-API-Key": key[1]}, timeout=30) as client:
            response = client.post(
                "/v1/models/digits/infer", json={"input": {"pixels": data.data[n].tolist()}}
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-sluice-version"] == "1"
            return dict(response.json())

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, [n % 32 for n in range(64)]))
    # The first 32 are ones this model gets right (the gunicorn test's).
    assert [a["output"]["label"] for a in answers] == list(data.target[:32]) * 2
    assert max(a["batch_size"] for a in answers) > 1


@pytest.mark.stack_env(INFERENCE_QUEUE_BOUND="1")
def test_the_unary_server_answers_503_when_full_and_504_past_the_deadline(
    stack, unary, key, doubler
) -> None:
    from inference.models import ModelVersion

    ModelVersion.objects.filter(pk=doubler.pk).update(
        runtime_options={"handler": "inference.tests.fakes.Doubler", "sleep": 0.8},
        max_batch_size=1,
    )

    def ask(timeout_ms: int) -> httpx.Response:
        with httpx.Client(base_url=unary, headers={"X-API-Key": key[1]}, timeout=30) as client:
            return client.post(
                "/v1/models/doubler/infer", json={"input": {"x": 3}, "timeout_ms": timeout_ms}
            )

    from inference.transport import admission, redis_client

    # The in-flight set is this run's (its Redis prefix): a request of an earlier test that
    # ended without its answer (a killed worker, a deadline) holds its slot until its deadline,
    # and with a bound of one that slot would be the only one.
    redis_client.client().delete(redis_client.key("inflight", "cpu"))
    # Loaded and warm first; its deadline is generous because a busy machine loads slowly.
    warm = ask(30000)
    assert warm.status_code == 200, warm.text
    assert warm.json()["output"] == {"y": 6}
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(ask, 5000)
        wait_for(lambda: admission.in_flight("cpu") == 1, "the queue's one slot to be taken")
        full = ask(5000)
        assert slow.result().status_code == 200
    assert full.status_code == 503, full.text
    assert full.headers["content-type"] == "application/problem+json"
    assert full.headers["retry-after"]
    late = ask(200)
    assert late.status_code == 504, late.text
    assert late.headers["content-type"] == "application/problem+json"
