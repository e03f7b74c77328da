"""Shadow versions report (inference/transport/shadows.py): each shadow's answers are paired
with the primary's by request and compared, shown in the admin and in metrics."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from inference.catalog import version_health
from inference.models import ModelVersion
from inference.registry import services
from inference.tests.conftest import make_version, wait_for
from inference.tests.fakes import BROKEN, SCORER
from inference.transport import dispatch, shadows
from inference.transport.shadows import Comparison, compare

pytestmark = pytest.mark.django_db


def test_it_compares_labels_numbers_and_shapes() -> None:
    found = compare(
        {"label": "cat", "n": 3, "p": [0.5, 0.25], "score": 1.0, "gone": 1},
        {"label": "dog", "n": 3, "p": [0.25, 0.5], "score": 1.5, "extra": True},
    )
    assert found["label"] == Comparison(labels=1, agreed=0)
    assert found["n"] == Comparison(labels=1, agreed=1)  # an integer is a label
    assert found["p"] == Comparison(values=2, abs_diff=0.5)
    assert found["score"] == Comparison(values=1, abs_diff=0.5)
    assert found["gone"] == Comparison(mismatches=1) and found["extra"] == Comparison(mismatches=1)
    assert compare({"p": [0.1, 0.2]}, {"p": [0.1]})["p"] == Comparison(mismatches=1)
    assert compare({"p": [0.1]}, {"p": "0.1"})["p"] == Comparison(mismatches=1)
    assert compare({"e": [[1.0, 2.0]]}, {"e": [[1.0, 4.0]]})["e"] == Comparison(
        values=2, abs_diff=2.0
    )
    assert compare([1], {"a": 1}) == {"": Comparison(mismatches=1)}
    ragged = compare({"e": [[1.0], [2.0, 3.0]]}, {"e": [[1.0], [2.0]]})
    assert ragged["e"] == Comparison(mismatches=1)


def _model_with_shadow(
    shadow_options: dict, skip_check: str | None = None
) -> tuple[ModelVersion, ModelVersion]:
    primary = make_version("scored", options=SCORER)
    shadow = make_version("scored", version="2", options=shadow_options, activate=False)
    services.version_set_shadow(version=shadow, shadow=True, actor="ops", skip_check=skip_check)
    return primary, shadow


def _settled(version: ModelVersion, done: int) -> shadows.ShadowReport:
    def ready() -> bool:
        shadows.flush()
        found = shadows.report(version.pk)
        return found.pairs + found.shadow_errors + found.unanswered + found.skipped >= done

    wait_for(ready, f"{done} shadow answers")
    return shadows.report(version.pk)


def test_it_reports_agreement_difference_and_latency_after_known_traffic(api, eager) -> None:
    _, shadow = _model_with_shadow({**SCORER, "offset": 0.25, "wrong_every": 4})
    for x in range(20):
        response = api.post("/v1/models/scored/infer", {"input": {"x": x}}, format="json")
        assert response.status_code == 200 and response.json()["version"] == "1"
        assert response.json()["output"] == {"label": x % 3, "score": x / 10}  # the primary's
    report = _settled(shadow, 20)
    assert report.pairs == 20 and report.shadow_errors == 0
    outputs = {o.name: o for o in report.outputs}
    assert outputs["label"].agreement == 0.75 and outputs["label"].labels == 20  # 0, 4, … 16 differ
    assert outputs["score"].mean_abs_diff == pytest.approx(0.25) and outputs["score"].values == 20
    assert report.primary_ms is not None and report.shadow_ms is not None
    version_health.flush()
    health = version_health.window(shadow.pk, 60)  # the shadow's own, as any version's
    assert health.requests == 20 and health.error_rate == 0.0 and health.p99_ms is not None
    sample = REGISTRY.get_sample_value
    labels = {"model": "scored", "version": "2"}
    assert sample("sluice_shadow_requests_total", {**labels, "outcome": "compared"}) >= 20
    assert sample("sluice_shadow_agreed_total", {**labels, "output": "label"}) >= 15


def test_it_counts_a_failing_shadow_and_a_skipped_copy(api, eager, monkeypatch) -> None:
    # Its check would refuse it (it is how a broken shadow is watched in a test).
    _, shadow = _model_with_shadow(BROKEN, skip_check="measuring failures")
    for x in range(3):
        assert (
            api.post("/v1/models/scored/infer", {"input": {"x": x}}, format="json").status_code
            == 200
        )
    assert _settled(shadow, 3).shadow_errors == 3
    version_health.flush()
    assert version_health.window(shadow.pk, 60).error_rate == 1.0  # its own health
    monkeypatch.setattr(dispatch, "shadow_copy", lambda *args, **kwargs: False)  # queue full
    assert (
        api.post("/v1/models/scored/infer", {"input": {"x": 1}}, format="json").status_code == 200
    )
    report = _settled(shadow, 4)
    assert report.skipped == 1 and report.pairs == 0


def test_a_new_shadow_starts_a_fresh_report(api, eager) -> None:
    _, shadow = _model_with_shadow(SCORER)
    api.post("/v1/models/scored/infer", {"input": {"x": 1}}, format="json")
    assert _settled(shadow, 1).pairs == 1
    services.version_set_shadow(version=shadow, shadow=False, actor="ops")
    services.version_set_shadow(version=shadow, shadow=True, actor="ops")
    assert shadows.report(shadow.pk).pairs == 0


def test_the_models_admin_page_shows_the_comparison(admin_client, api, eager) -> None:
    primary, shadow = _model_with_shadow({**SCORER, "offset": 0.5, "wrong_every": 2})
    for x in range(4):
        api.post("/v1/models/scored/infer", {"input": {"x": x}}, format="json")
    _settled(shadow, 4)
    page = admin_client.get(f"/admin/inference/model/{primary.model_id}/change/").content.decode()
    assert "Shadow comparison" in page
    assert "label: 50.0% agree of 4" in page and "score: mean |Δ| 0.5 over 4 values" in page
