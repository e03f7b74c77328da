"""End to end, version lifecycle safety: the pre-activation check in a real worker (the
issue's broken artifact refused at activation and at ``setweights``), a canary with 30 %
errors rolled back by its policy while a healthy one is kept, and shadow comparison figures
after known traffic. Same stack as test_e2e.py: a ``celery worker`` process, gunicorn
and the unary server over Redis and the PostgreSQL test database."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from inference.registry.builtin import DIGITS_OPTIONS
from inference.tests.conftest import make_version, wait_for
from inference.tests.fakes import PICKY, SCORER
from testing.processes import manage

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (PostgreSQL + Redis pass)"),
]


def _register(env: dict[str, str], version: str, artifact: Path, *extra: str) -> str:
    return manage(
        env, "registermodel", "digits", version, "--runtime", "onnx", "--artifact", str(artifact),
        *extra,
    )  # fmt: skip


def _versions_answering(base: str, raw_key: str, count: int) -> Counter[str]:
    pixels = load_digits().data[0].tolist()
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=base, headers={"X-API-Key": raw_key}, timeout=30) as client:
        for _ in range(count):
            response = client.post("/v1/models/digits/infer", json={"input": {"pixels": pixels}})
            assert response.status_code == 200, response.text
            seen[response.json()["version"]] += 1
    return seen


def test_a_broken_artifact_is_refused_at_activation_and_at_setweights(
    stack: dict[str, Any],
    key: Any,
    digits: Any,
    digits_onnx: bytes,
    tmp_path: Path,
) -> None:
    from inference.models import ModelEvent, ModelVersion

    env, worker = stack["env"], stack["hostname"]
    # The case: an ONNX file whose input (X) is not the field requests send (pixels).
    artifact = tmp_path / "digits-v2.onnx"
    artifact.write_bytes(digits_onnx)
    with pytest.raises(RuntimeError) as refused:
        _register(env, "2", artifact, "--activate")
    said = str(refused.value)
    assert "KeyError: 'X'" in said and f"in worker {worker}" in said, said
    assert ModelVersion.objects.get(model__name="digits", version="2").state == "draft"

    # An operator insists on activating the same artifact: allowed, audited, and it still gets
    # no traffic, because giving it some runs the check again.
    out = _register(env, "3", artifact, "--activate", "--skip-check", "vendor says it works")
    assert "check SKIPPED (audited): vendor says it works" in out
    assert ModelEvent.objects.filter(action="check-skipped", version__version="3").exists()
    with pytest.raises(RuntimeError) as refused:
        manage(env, "setweights", "digits", "1=90", "3=10")
    said = str(refused.value)
    assert "KeyError: 'X'" in said and "weights unchanged" in said, said
    weights = dict(
        ModelVersion.objects.filter(model__name="digits").values_list("version", "traffic_weight")
    )
    assert weights == {"1": 100, "2": 0, "3": 0}
    assert _versions_answering(stack["base"], key[1], 20) == {"1": 20}

    # The same artifact with the options that map its input passes, in the worker.
    out = _register(env, "4", artifact, "--options", json.dumps(DIGITS_OPTIONS), "--activate")
    assert "check passed on 1 example(s)" in out and f"in worker {worker}" in out, out
    out = manage(env, "setweights", "digits", "1=50", "4=50")
    assert "check passed on 1 example(s)" in out, out
    assert set(_versions_answering(stack["base"], key[1], 40)) == {"1", "4"}


def test_a_shadow_is_compared_with_the_primary_after_known_traffic(
    stack: dict[str, Any],
    unary: str,
    key: Any,
    settings: Any,
) -> None:
    from inference.registry import services
    from inference.transport import shadows

    make_version("scored", options=SCORER)
    shadow = make_version(
        "scored",
        version="2",
        options={**SCORER, "offset": 0.25, "wrong_every": 4},
        activate=False,
    )
    services.version_set_shadow(version=shadow, shadow=True, actor="e2e")  # checked in the worker
    # 20 requests through gunicorn (threads) and the same 20 through the unary server (its
    # event loop): the shadow gets the label of 0, 4, 8, 12, 16 wrong and every score 0.25 off.
    for base in (stack["base"], unary):
        with httpx.Client(base_url=base, headers={"X-API-Key": key[1]}, timeout=30) as client:
            for x in range(20):
                response = client.post("/v1/models/scored/infer", json={"input": {"x": x}})
                assert response.status_code == 200, response.text
                assert response.json()["output"] == {"label": x % 3, "score": x / 10}
    # Read what the servers wrote: the cache under their prefix, not this test's own.
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "KEY_PREFIX": settings.REDIS_KEY_PREFIX}
    }
    wait_for(lambda: shadows.report(shadow.pk).pairs == 40, "40 compared answers", timeout=20)
    report = shadows.report(shadow.pk)
    print("shadow report after 40 requests:", report)
    outputs = {o.name: o for o in report.outputs}
    assert report.shadow_errors == report.unanswered == report.skipped == 0
    assert outputs["label"].agreement == 0.75 and outputs["label"].labels == 40
    assert outputs["score"].mean_abs_diff == pytest.approx(0.25) and outputs["score"].values == 40
    assert report.primary_ms is not None and report.shadow_ms is not None
    # gunicorn's half, in its Prometheus metrics.
    exposition = httpx.get(f"{stack['base']}/metrics", timeout=10).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    labels = (("model", "scored"), ("outcome", "compared"), ("version", "2"))
    assert samples[("sluice_shadow_requests_total", labels)] == 20


def test_a_failing_canary_is_rolled_back_within_its_window_and_a_healthy_one_kept(
    stack: dict[str, Any],
    key: Any,
    doubler: Any,
    settings: Any,
) -> None:
    from inference.catalog import version_health
    from inference.models import ModelEvent, ModelVersion
    from inference.registry import services

    window = 30
    # Fails for 30 % of inputs (x % 10 < 3), answers the rest; passes its check on x = 5.
    flaky = make_version(
        version="2",
        options={**PICKY, "poison": [x for x in range(200) if x % 10 < 3]},
        examples=[{"x": 5}],
        activate=False,
    )
    healthy = make_version(version="3", activate=False)
    for version in (flaky, healthy):
        services.version_activate(version=version, actor="e2e")  # checked in the worker
    model = doubler.model
    services.model_set_canary_policy(
        model=model,
        # Latency is not judged here: on a busy test machine p99s of a few dozen requests
        # differ by more than any ratio worth testing; errors are the subject.
        policy={
            "window_seconds": window,
            "min_requests": 20,
            "max_error_rate_increase": 0.1,
            "max_p99_ratio": None,
        },
        actor="e2e",
    )
    services.model_set_weights(model=model, weights={"1": 40, "2": 30, "3": 30}, actor="e2e")

    def ask(x: int) -> tuple[int, str | None]:
        with httpx.Client(base_url=stack["base"], headers={"X-API-Key": key[1]}, timeout=30) as c:
            response = c.post("/v1/models/doubler/infer", json={"input": {"x": x}})
            return response.status_code, response.headers.get("x-sluice-version")

    with ThreadPoolExecutor(max_workers=8) as pool:
        first = list(pool.map(ask, range(160)))
    assert {status for status, _ in first} <= {200, 500}, first
    wait_for(
        lambda: ModelEvent.objects.filter(action="canary-rollback").exists(),
        "the canary's rollback",
        timeout=window,
    )
    event = ModelEvent.objects.get(action="canary-rollback")
    flaky.refresh_from_db()
    assert flaky.serving_since is not None
    took = (event.created_at - flaky.serving_since).total_seconds()
    print(f"rolled back {took:.1f} s after the canary got traffic:", event.detail)
    assert took < window  # within its window
    assert event.version_id == flaky.pk and event.actor == "canary-policy"
    assert event.detail["canary_window"]["requests"] >= 20
    assert (
        event.detail["canary_window"]["error_rate"]
        > 0.1 + event.detail["stable_window"]["error_rate"]
    )
    assert event.detail["weight_cut"] == 30 and event.detail["stable"] == "1"
    weights = dict(ModelVersion.objects.values_list("version", "traffic_weight"))
    assert weights == {"1": 70, "2": 0, "3": 30}
    # The healthy canary served enough to be judged, and keeps its share.
    time.sleep(2)  # another judgement or two of the same windows
    assert ModelEvent.objects.filter(action="canary-rollback").count() == 1
    settings.CACHES = {  # the windows the server wrote, under its prefix
        "default": {**settings.CACHES["default"], "KEY_PREFIX": settings.REDIS_KEY_PREFIX}
    }
    judged = version_health.window(healthy.pk, window)
    print("the healthy canary's window:", judged)
    assert judged.requests >= 20 and judged.error_rate == 0.0
    assert ModelVersion.objects.get(pk=healthy.pk).traffic_weight == 30
    with ThreadPoolExecutor(max_workers=8) as pool:
        after = list(pool.map(ask, [5] * 100))  # an input every version answers
    assert all(status == 200 for status, _ in after), after
    served = Counter(version for _, version in after)
    print("after the rollback, 100 requests went to:", dict(served))
    assert set(served) == {"1", "3"} and served["1"] > served["3"], served
