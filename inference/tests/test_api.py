from __future__ import annotations

import time

import numpy as np
import pytest
from django.conf import settings
from sklearn.datasets import load_digits

from inference.catalog import version_health
from inference.models import ModelVersion
from inference.rules.breaker import CircuitBreaker
from inference.runtimes.onnx import OnnxRuntime
from inference.tests.conftest import make_version, wait_for
from inference.tests.fakes import BROKEN, PICKY
from inference.transport import admission, dispatch, shadows
from inference.worker import outcomes, predict
from plumbing.logcontext import RequestIdFilter
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


def _pixels(n: int = 0) -> list[float]:
    return load_digits().data[n].tolist()


def test_it_lists_models_in_the_openai_shape(api, digits: ModelVersion) -> None:
    body = api.get("/v1/models").json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["id"] == "digits" and model["object"] == "model"
    assert isinstance(model["created"], int) and model["owned_by"] == "sluice"
    assert model["task"] == "classification" and model["available"] is True
    assert model["stable_version"] == "1"
    [version] = model["versions"]
    assert version["runtime"] == "onnx" and version["state"] == "active"
    assert version["available"] is True and version["unavailable_reason"] is None
    assert api.get("/v1/models/digits").json()["id"] == "digits"


def test_it_shows_a_tenant_only_the_models_its_plan_allows(api, tenant, digits, doubler) -> None:
    tenant.allowed_models = ["doubler"]
    tenant.save()
    assert [m["id"] for m in api.get("/v1/models").json()["data"]] == ["doubler"]
    _problem(api.get("/v1/models/digits"), 404)
    _problem(api.post("/v1/models/digits/infer", {"input": {}}, format="json"), 404)


def test_it_needs_the_infer_scope(client_for, tenant, digits) -> None:
    _, raw = make_key(tenant, scopes=["jobs"])
    _problem(client_for(raw).get("/v1/models"), 403)


def test_it_classifies_a_digit_end_to_end_in_process(api, digits, eager) -> None:
    data = load_digits()
    for n in (0, 1, 7):
        response = api.post(
            "/v1/models/digits/infer", {"input": {"pixels": _pixels(n)}}, format="json"
        )
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["object"] == "inference" and body["model"] == "digits"
        assert body["version"] == "1" and response["X-Sluice-Version"] == "1"
        assert body["output"]["label"] == data.target[n]
        assert len(body["output"]["probabilities"]) == 10
        assert abs(sum(body["output"]["probabilities"]) - 1) < 1e-4


def test_it_answers_422_naming_the_wrong_field(api, digits) -> None:
    body = _problem(
        api.post("/v1/models/digits/infer", {"input": {"pixels": [1, 2]}}, format="json"), 422
    )
    assert [e["field"] for e in body["errors"]] == ["input.pixels"]
    body = _problem(api.post("/v1/models/digits/infer", {"input": {}}, format="json"), 422)
    assert body["errors"][0]["field"] == "input.pixels"
    too_bright = [99.0] * 64
    body = _problem(
        api.post("/v1/models/digits/infer", {"input": {"pixels": too_bright}}, format="json"), 422
    )
    assert body["errors"][0]["field"].startswith("input.pixels")
    body = _problem(api.post("/v1/models/digits/infer", {"inputs": 1}, format="json"), 422)
    assert body["errors"][0]["field"] == "input"


@pytest.mark.usefixtures("worker_everywhere")
def test_it_answers_503_with_retry_after_when_the_queue_is_full(api, settings) -> None:
    queue = f"q{time.time_ns()}"  # a queue of this test only (the Redis pass shares the server)
    settings.INFERENCE_QUEUES = ["cpu", queue]
    make_version(queue=queue)
    settings.INFERENCE_QUEUE_BOUND = 1
    admission.admit(queue, "someone-else", time.time() + 30)
    try:
        started = time.monotonic()
        response = api.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json")
        body = _problem(response, 503)
        assert time.monotonic() - started < 1  # refused at once, not after a wait
        assert response["Retry-After"] == "1"
        assert body["type"] == "urn:sluice:problem:queue-full"
    finally:
        admission.release(queue, "someone-else")
    assert admission.in_flight(queue) == 0


def test_it_frees_a_slot_held_past_its_deadline() -> None:
    queue = f"q{time.time_ns()}"
    admission.admit(queue, "dead-web-process", time.time() - 1)
    assert admission.in_flight(queue) == 0


@pytest.mark.usefixtures("worker_everywhere")
def test_it_answers_504_when_no_answer_comes_before_the_deadline(api, doubler, monkeypatch):
    monkeypatch.setattr(dispatch, "batch_wire", lambda *args: None)  # via enqueue_batch
    monkeypatch.setattr(dispatch, "enqueue_batch", lambda **kw: None)  # a worker that never answers
    # Slots other tests' unconsumed streams hold on the shared "cpu" queue (Redis pass).
    held = admission.in_flight("cpu")
    started = time.monotonic()
    response = api.post(
        "/v1/models/doubler/infer", {"input": {"x": 2}, "timeout_ms": 150}, format="json"
    )
    assert _problem(response, 504)["type"] == "urn:sluice:problem:timeout"
    assert 0.14 < time.monotonic() - started < 2
    assert admission.in_flight("cpu") == held


def test_it_marks_a_version_unavailable_when_its_engine_is_missing(
    api, digits, admin_client, monkeypatch
):
    monkeypatch.setattr(OnnxRuntime, "engines", ("sluice_no_such_engine",))
    [version] = api.get("/v1/models/digits").json()["versions"]
    assert version["available"] is False
    assert version["unavailable_reason"] == (
        "unavailable: sluice_no_such_engine is not installed — "
        "install with pip install -r requirements-models.txt"
    )
    body = _problem(
        api.post("/v1/models/digits/infer", {"input": {"pixels": _pixels()}}, format="json"), 503
    )
    assert "sluice_no_such_engine is not installed" in body["detail"]
    page = admin_client.get("/admin/inference/modelversion/")
    assert page.status_code == 200
    assert "sluice_no_such_engine is not installed" in page.content.decode()


def test_it_pins_a_version_and_routes_a_canary(api, eager) -> None:
    make_version()
    v2 = make_version(version="2")
    v2.model.set_weights({"1": 50, "2": 50}, actor="t")
    seen = set()
    for _ in range(40):
        body = api.post("/v1/models/doubler/infer", {"input": {"x": 3}}, format="json").json()
        assert body["output"] == {"y": 6}
        seen.add(body["version"])
    assert seen == {"1", "2"}
    body = api.post(
        "/v1/models/doubler/infer", {"input": {"x": 3}, "version": "2"}, format="json"
    ).json()
    assert body["version"] == "2"


def test_it_rolls_back_a_failing_canary(api, eager, admin_client) -> None:
    make_version()
    canary = make_version(version="2", options=BROKEN)
    model = canary.model
    model.set_weights({"1": 50, "2": 50}, actor="t")
    statuses = {
        api.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json").status_code
        for _ in range(30)
    }
    assert statuses == {200, 500}
    response = admin_client.post(
        "/admin/inference/model/",
        {"action": "rollback", "_selected_action": [model.pk]},
    )
    assert response.status_code == 302
    for _ in range(20):
        body = api.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json").json()
        assert body["version"] == "1"
    assert model.events.filter(action="rollback", actor="admin:admin").exists()


def test_a_version_failing_for_every_caller_opens_and_fails_over_to_stable(
    api, other_api, eager, settings
) -> None:
    settings.INFERENCE_BREAKER_FAILURES = 2
    make_version()
    canary = make_version(version="2", options=BROKEN)
    canary.model.set_weights({"1": 0, "2": 100}, actor="t")  # stable keeps the pointer only
    codes = [
        client.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json").status_code
        for client in (api, other_api)
    ]
    assert codes == [500, 500]
    assert CircuitBreaker().state(canary.pk) == "open"
    for client in (api, other_api):
        body = client.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json").json()
        assert body["version"] == "1" and body["failed_over"] is True
    # Asked for by name, it is refused until its cooldown has passed, and says so.
    pinned = api.post(
        "/v1/models/doubler/infer", {"input": {"x": 1}, "version": "2"}, format="json"
    )
    assert _problem(pinned, 503)["type"] == "urn:sluice:problem:model-unavailable"
    assert 1 <= int(pinned["Retry-After"]) <= settings.INFERENCE_BREAKER_COOLDOWN_SECONDS


def test_one_tenants_failing_inputs_leave_another_tenant_at_full_success(
    api, other_api, eager, settings
) -> None:
    settings.INFERENCE_BREAKER_FAILURES = 2
    version = make_version("picky", options=PICKY)
    for n in range(30):
        poisoned = api.post("/v1/models/picky/infer", {"input": {"x": 13}}, format="json")
        assert poisoned.status_code == 500
        if n % 3 == 0:
            fine = other_api.post("/v1/models/picky/infer", {"input": {"x": n}}, format="json")
            assert fine.status_code == 200 and fine.json()["output"] == {"y": 2 * n}
    assert CircuitBreaker().state(version.pk) == "closed"
    ok = other_api.post("/v1/models/picky/infer", {"input": {"x": 4}}, format="json")
    assert ok.status_code == 200


def test_a_circuit_a_worker_outage_opened_closes_when_a_worker_is_ready(settings) -> None:
    settings.INFERENCE_BREAKER_FAILURES = 2
    stranded = make_version("stranded")
    failing = make_version("failing", options=BROKEN)
    breaker = CircuitBreaker()
    for _ in range(2):
        breaker.record(stranded.pk, ok=False, outcome="timeout", caller="a")
        breaker.record(failing.pk, ok=False, outcome="engine_error", caller="a")
    assert outcomes.outage_over({"cpu"}) == [str(stranded.pk)]
    assert breaker.state(stranded.pk) == "closed"
    assert breaker.state(failing.pk) == "open"  # its engine failed: the cooldown stands


@pytest.mark.redis
@pytest.mark.skipif(not settings.REDIS_URL, reason="the batch lane is the Redis configuration's")
@pytest.mark.usefixtures("worker_everywhere")  # a worker that died: its claim not lapsed yet
def test_requests_no_worker_takes_are_a_503_and_not_held_against_the_version(api, settings) -> None:
    """Nobody serves the version's queue (no worker in this process): each request waits its
    deadline, finds its batch still on the lane, and answers 503 with Retry-After."""
    settings.INFERENCE_BREAKER_FAILURES = 2
    version = make_version()
    for _ in range(4):
        response = api.post(
            "/v1/models/doubler/infer", {"input": {"x": 1}, "timeout_ms": 200}, format="json"
        )
        body = _problem(response, 503)
        assert "No worker took the request from queue cpu" in body["detail"]
        assert response["Retry-After"] == str(settings.INFERENCE_RETRY_AFTER_SECONDS)
    assert CircuitBreaker().state(version.pk) == "closed"
    version_health.flush()
    assert version_health.window(version.pk, 60).requests == 0  # none of them reached it


def test_it_copies_requests_to_a_shadow_and_compares_it(api, eager) -> None:
    make_version()
    shadow = make_version(version="2")
    shadow.set_shadow(True, actor="t")
    held = admission.in_flight("cpu")
    body = api.post("/v1/models/doubler/infer", {"input": {"x": 5}}, format="json").json()
    assert body["version"] == "1" and body["output"] == {"y": 10}
    wait_for(lambda: shadows.flush() or shadows.report(shadow.pk).pairs == 1, "the comparison")
    report = shadows.report(shadow.pk)
    assert report.shadow_errors == 0 and report.outputs[0].agreement == 1.0
    assert admission.in_flight("cpu") == held  # the shadow's slot was given back too
    version_health.flush()
    health = version_health.window(shadow.pk, 60)  # what /v1/models shows of the shadow
    assert (health.requests, health.failures) == (1, 0) and health.p99_ms is not None


def test_it_validates_timeout(api, doubler) -> None:
    body = _problem(
        api.post(
            "/v1/models/doubler/infer", {"input": {"x": 1}, "timeout_ms": 10**9}, format="json"
        ),
        422,
    )
    assert body["errors"][0]["field"] == "timeout_ms"


def test_onnx_digits_predictions_match_scikit_learn(digits) -> None:
    from inference.catalog.selectors import version_spec

    loaded = predict.model_cache().get(version_spec(digits.pk))
    data = load_digits()
    batch = [{"pixels": row} for row in data.data[:50].tolist()]
    outputs = loaded.runtime.predict(batch)
    labels = np.array([o["label"] for o in outputs])
    assert (labels == data.target[:50]).mean() > 0.9


def test_it_keeps_a_tenant_on_one_canary_version_when_sticky(api, other_api, eager) -> None:
    make_version()
    v2 = make_version(version="2")
    v2.model.set_weights({"1": 50, "2": 50}, actor="t")
    type(v2.model).objects.filter(pk=v2.model_id).update(sticky_routing=True)
    for client in (api, other_api):
        seen = {
            client.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json").json()[
                "version"
            ]
            for _ in range(10)
        }
        assert len(seen) == 1


@pytest.mark.usefixtures("worker_everywhere")
def test_it_answers_503_when_the_broker_is_unreachable(api, doubler, monkeypatch) -> None:
    from kombu.exceptions import OperationalError

    def down(**kwargs):
        raise OperationalError("Connection refused")

    monkeypatch.setattr(dispatch, "batch_wire", lambda *args: None)  # via enqueue_batch

    monkeypatch.setattr(dispatch, "enqueue_batch", down)
    held = admission.in_flight("cpu")
    response = api.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json")
    body = _problem(response, 503)
    assert "unreachable" in body["detail"] and response["Retry-After"] == "1"
    assert admission.in_flight("cpu") == held


def test_it_lists_models_in_constant_queries(api, django_assert_max_num_queries) -> None:
    for name in ("a", "b", "c"):
        make_version(name)
        make_version(name, version="2")
    api.get("/v1/models")  # warm the key cache
    with django_assert_max_num_queries(3):
        body = api.get("/v1/models").json()
    assert len(body["data"]) == 3 and all(len(m["versions"]) == 2 for m in body["data"])


def test_an_engine_error_is_a_500_naming_the_request_id_never_the_engines_text(
    api, eager, caplog
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    make_version("picky", options=PICKY)
    response = api.post("/v1/models/picky/infer", {"input": {"x": 13}}, format="json")
    body = _problem(response, 500)
    rid = response["X-Request-ID"]
    assert body["type"] == "urn:sluice:problem:inference-error" and body["request_id"] == rid
    assert rid in body["detail"]
    assert "index out of range" not in response.content.decode()
    logged = [r for r in caplog.records if "index out of range" in r.getMessage()]
    assert any(r.request_id == rid for r in logged)  # type: ignore[attr-defined]
    # The engine runs other inputs of the same version as before.
    assert api.post("/v1/models/picky/infer", {"input": {"x": 2}}, format="json").status_code == 200
