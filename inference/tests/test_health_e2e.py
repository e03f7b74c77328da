"""Model safety end to end (issue 14 part A, issue 13 item 9): a real ``celery worker`` with
gunicorn (and the unary server) on PostgreSQL + Redis. No tenant can take a version down for
the others; a version that fails for everyone opens its circuit and fails over; a worker
outage is an outage of the queue, over as soon as a worker serves again."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from django.conf import settings

from inference.tests.conftest import make_version, wait_for
from inference.tests.fakes import BROKEN
from inference.transport.lane import held_key
from inference.transport.redis_client import client as redis_client
from tenants.models import Tenant
from tenants.tests.factories import make_key

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (PostgreSQL + Redis pass)"),
]


def _client(base: str, raw: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"X-API-Key": raw}, timeout=60)


def _version(base: str, raw: str, model: str, version: str) -> dict[str, Any]:
    with _client(base, raw) as client:
        listed = client.get(f"/v1/models/{model}").json()["versions"]
    return next(v for v in listed if v["version"] == version)


@pytest.fixture
def other_key(other_tenant: Tenant) -> str:
    return make_key(other_tenant, scopes=["infer"])[1]


def test_textgen_past_its_context_window_is_a_422_and_other_tenants_are_served(
    stack, key, other_key
) -> None:
    from inference.registry.builtin import TEXTGEN, install

    install(TEXTGEN, actor="test")
    poisoner, healthy = _client(stack["base"], key[1]), _client(stack["base"], other_key)
    with poisoner, healthy:
        warm = healthy.post(
            "/v1/models/textgen/infer",
            json={"input": {"prompt": "In the beginning", "max_tokens": 4}, "timeout_ms": 60000},
        )
        assert warm.status_code == 200, warm.text
        over = {"prompt": "In the beginning", "max_tokens": 300}  # the request
        crowded = {"prompt": "And God said, Let there be light. " * 20, "max_tokens": 200}
        for body in [over] * 6 + [crowded] * 6:  # past INFERENCE_BREAKER_FAILURES either way
            refused = poisoner.post("/v1/models/textgen/infer", json={"input": body})
            assert refused.status_code == 422, refused.text
            assert [e["field"] for e in refused.json()["errors"]] == ["input.max_tokens"]
        served = [
            healthy.post(
                "/v1/models/textgen/infer", json={"input": {"prompt": "And", "max_tokens": 8}}
            ).status_code
            for _ in range(5)
        ]
    assert served == [200] * 5
    version = _version(stack["base"], other_key, "textgen", "1")
    assert version["available"] is True and version["circuit"]["state"] == "closed"


def test_an_input_the_engine_fails_on_fails_alone_in_its_batch(stack, unary, key) -> None:
    """Sixteen requests on the unary server: the first (a slow input) keeps the worker busy,
    so the other fifteen (the bad input among them) travel as one batch. One 500, fifteen
    200."""
    make_version(
        "picky",
        options={"handler": "inference.tests.fakes.Picky", "slow": [100], "sleep": 1.5},
        max_batch_size=16,
        max_delay_ms=2000,
    )
    with _client(unary, key[1]) as client:
        assert client.post("/v1/models/picky/infer", json={"input": {"x": 1}}).status_code == 200

    def ask(x: int) -> httpx.Response:
        with _client(unary, key[1]) as client:
            return client.post("/v1/models/picky/infer", json={"input": {"x": x}})

    inputs = [100, *range(20, 27), 13, *range(27, 34)]
    held = held_key("cpu", stack["hostname"])
    with ThreadPoolExecutor(max_workers=16) as pool:
        first = pool.submit(ask, inputs[0])
        # In the worker now: the rest wait for it, together.
        wait_for(lambda: redis_client().llen(held) == 1, "the worker to hold the slow batch")
        answers = [first.result(), *pool.map(ask, inputs[1:])]
    failed = [a for a in answers if a.status_code != 200]
    assert [a.status_code for a in answers].count(200) == 15, [a.text for a in failed]
    assert [x for x, a in zip(inputs, answers, strict=True) if a.status_code != 200] == [13]
    problem = failed[0].json()
    assert failed[0].status_code == 500
    assert problem["type"] == "urn:sluice:problem:inference-error"
    assert problem["request_id"] == failed[0].headers["x-request-id"]
    assert "index out of range" not in failed[0].text
    ok = [(x, a.json()) for x, a in zip(inputs, answers, strict=True) if a.status_code == 200]
    assert all(body["output"] == {"y": 2 * x} for x, body in ok)
    sizes = sorted(body["batch_size"] for _, body in ok)
    print("batch sizes of the fifteen answers:", sizes)
    assert max(sizes) > 1  # they shared batches (15 halved around the bad input: 7, 4, …)


@pytest.mark.stack_env(INFERENCE_BREAKER_FAILURES="3")
def test_a_tenant_sending_failing_inputs_leaves_another_at_full_success(
    stack, key, other_key
) -> None:
    make_version("picky", options={"handler": "inference.tests.fakes.Picky"})
    results: dict[str, list[int]] = {"poisoner": [], "healthy": []}

    def run(who: str, raw: str, x: int) -> None:
        with _client(stack["base"], raw) as client:
            for _ in range(40):
                answer = client.post("/v1/models/picky/infer", json={"input": {"x": x}})
                results[who].append(answer.status_code)

    threads = [threading.Thread(target=run, args=("poisoner", key[1], 13)) for _ in range(3)]
    threads.append(threading.Thread(target=run, args=("healthy", other_key, 21)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    counts = {
        who: {code: codes.count(code) for code in set(codes)} for who, codes in results.items()
    }
    print("answers by status:", counts)
    assert results["poisoner"] == [500] * 120
    assert results["healthy"] == [200] * 40  # 100 % success
    version = _version(stack["base"], other_key, "picky", "1")
    assert version["circuit"]["state"] == "closed" and version["available"] is True
    wait_for(  # the web process flushes its outcomes about once a second
        lambda: _version(stack["base"], other_key, "picky", "1")["health"]["requests"] == 160,
        "the outcomes to be flushed",
    )
    version = _version(stack["base"], other_key, "picky", "1")
    assert (version["health"]["input_failures"], version["health"]["failing_callers"]) == (120, 1)


@pytest.mark.stack_env(INFERENCE_BREAKER_FAILURES="3", INFERENCE_BREAKER_COOLDOWN_SECONDS="60")
def test_a_version_failing_for_every_caller_opens_and_fails_over_to_stable(
    stack, key, other_key
) -> None:
    make_version()  # doubler 1, the stable version
    canary = make_version(version="2", options=BROKEN)
    canary.model.set_weights({"1": 0, "2": 100}, actor="test")
    failures = 0
    with _client(stack["base"], key[1]) as one, _client(stack["base"], other_key) as other:
        for n in range(20):
            answer = (one, other)[n % 2].post("/v1/models/doubler/infer", json={"input": {"x": n}})
            if answer.status_code == 200:
                break
            assert answer.status_code == 500, answer.text
            failures += 1
        assert answer.json()["failed_over"] is True and answer.json()["version"] == "1"
        # Another web process sees the open circuit within INFERENCE_ROUTING_CACHE_SECONDS.
        assert failures <= 3 + 2, failures
        for client in (one, other):
            moved = client.post("/v1/models/doubler/infer", json={"input": {"x": 5}})
            assert moved.status_code == 200 and moved.json()["failed_over"] is True
        pinned = one.post("/v1/models/doubler/infer", json={"input": {"x": 5}, "version": "2"})
    assert pinned.status_code == 503, pinned.text
    assert pinned.json()["type"] == "urn:sluice:problem:model-unavailable"
    assert 1 <= int(pinned.headers["retry-after"]) <= 60
    canary_state = _version(stack["base"], key[1], "doubler", "2")
    assert canary_state["available"] is False and canary_state["circuit"]["state"] == "open"
    print(f"opened after {failures} failures; Retry-After {pinned.headers['retry-after']} s")


@pytest.mark.stack_env(INFERENCE_BREAKER_FAILURES="3")
def test_after_a_worker_outage_the_model_is_back_with_the_worker(stack, key) -> None:
    """Issue 13 item 9: requests no worker took are not held against the version (503 "no
    worker", at their deadline, or at once after the worker's claim on its queue lapsed), and
    the version serves again as soon as a worker does — not a circuit's cooldown later. (The
    batches the killed worker held time out: with more of them than INFERENCE_BREAKER_FAILURES
    they open the circuit, which the returning worker closes.)"""
    make_version()
    answers: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with _client(stack["base"], key[1]) as client:
            while not stop.is_set():
                response = client.post(
                    "/v1/models/doubler/infer", json={"input": {"x": 2}, "timeout_ms": 1000}
                )
                answers.append((time.monotonic(), response.status_code, response.text))
                stop.wait(0.1)  # inside the tenant's 600 requests a minute

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: any(code == 200 for _, code, _ in answers), "traffic to flow")
    stack["kill_worker"]()
    down_at = time.monotonic()
    time.sleep(6)  # several deadlines pass with no worker
    stack["start_worker"]()
    back_at = time.monotonic()
    wait_for(lambda: any(t > back_at and code == 200 for t, code, _ in answers), "a 200", 60)
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join(30)
    during = [(code, text) for t, code, text in answers if down_at + 1.5 < t < back_at]
    # Queued before the killed worker's claim lapsed: no worker took it by its deadline; after:
    # refused at once, nobody serving the queue (plumbing/presence.py).
    unserved = sum(
        "No worker took the request" in text or "No worker is serving queue" in text
        for _, text in during
    )
    circuit = sum("circuit open" in text for _, text in during)
    after = [(t, code) for t, code, _ in answers if t > back_at]
    first_ok = min(t for t, code in after if code == 200)
    last_refused = max((t for t, code in after if code != 200), default=back_at)
    print(
        f"outage {back_at - down_at:.1f} s: {len(during)} answers during it ({unserved} no "
        f"worker, {circuit} circuit open); after the worker was back: first 200 in "
        f"{first_ok - back_at:.2f} s, the last refusal {last_refused - back_at:.2f} s"
    )
    # The requests the killed worker held end at their deadlines (504), one per thread at most;
    # every other one is a 503 that says why.
    assert during and sum(code == 504 for code, _ in during) <= len(threads)
    # (200s before back_at: the returning worker serves its lane before it logs "ready".)
    refused = [(code, text) for code, text in during if code != 200]
    assert unserved + circuit == len(refused) - sum(code == 504 for code, _ in refused)
    assert first_ok - back_at < 3 and last_refused - back_at < 3
    version = _version(stack["base"], key[1], "doubler", "1")
    assert version["circuit"]["state"] == "closed"
