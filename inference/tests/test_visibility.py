"""A version's state where people look: ``/v1/models`` (Sluice's fields), ``listmodels``, the
admin and Prometheus all say whether it would be served now, its circuit and its recent error
rate, p99 and last error (the error's text for operators only)."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command

from inference.catalog import version_health
from inference.rules.breaker import CircuitBreaker
from inference.tests.conftest import make_version
from inference.tests.fakes import PICKY

pytestmark = pytest.mark.django_db


@pytest.fixture
def failing(api, other_api, eager, settings):
    """``picky`` failed for two tenants until its circuit opened; no stable fallback."""
    settings.INFERENCE_BREAKER_FAILURES = 2
    version = make_version("picky", options=PICKY)
    assert api.post("/v1/models/picky/infer", {"input": {"x": 4}}, format="json").status_code == 200
    for client in (api, other_api):
        client.post("/v1/models/picky/infer", {"input": {"x": 13}}, format="json")
    assert CircuitBreaker().state(version.pk) == "open"
    version_health.flush()
    return version


def test_v1_models_says_an_open_version_will_not_be_served_and_why(failing, api) -> None:
    [model] = api.get("/v1/models").json()["data"]
    assert model["available"] is False  # its only version is open, nothing to fail over to
    [version] = model["versions"]
    assert version["available"] is False
    assert version["unavailable_reason"].startswith("version 1 is failing (circuit open; retry in")
    assert version["circuit"]["state"] == "open" and version["circuit"]["reason"] == "callers"
    assert 1 <= version["circuit"]["retry_after"] <= 30
    health = version["health"]
    assert (health["requests"], health["input_failures"], health["failing_callers"]) == (3, 2, 2)
    assert health["error_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert health["p99_ms"] is not None and health["window_seconds"] == 300
    assert health["last_error_outcome"] == "input_error" and health["last_error_at"]
    assert health["last_error"] is None  # the engine's own text is not a tenant's to read
    assert "index out of range" not in api.get("/v1/models/picky").content.decode()


def test_staff_read_the_last_errors_text(failing, admin_client) -> None:
    [version] = admin_client.get("/v1/models/picky").json()["versions"]
    assert version["health"]["last_error"] == "IndexError: index out of range in self"


def test_a_healthy_version_is_available_with_a_closed_circuit(api, eager) -> None:
    make_version()
    api.post("/v1/models/doubler/infer", {"input": {"x": 1}}, format="json")
    version_health.flush()
    [version] = api.get("/v1/models/doubler").json()["versions"]
    assert version["available"] is True and version["unavailable_reason"] is None
    assert version["circuit"] == {"state": "closed", "reason": None, "retry_after": None}
    assert version["health"]["requests"] == 1 and version["health"]["error_rate"] == 0.0


def test_listmodels_shows_the_circuit_and_the_last_error(failing, capsys) -> None:
    call_command("listmodels")
    out = capsys.readouterr().out
    assert "version 1 is failing (circuit open" in out
    assert "circuit open (callers) · last 5 min: 3 requests, 66.7 % errors, p99" in out
    assert "(input_error): IndexError: index out of range in self" in out


def test_the_admin_shows_the_circuit_and_the_last_error(failing, admin_client) -> None:
    pages = [
        admin_client.get("/admin/inference/modelversion/").content.decode(),
        admin_client.get(f"/admin/inference/modelversion/{failing.pk}/change/").content.decode(),
        admin_client.get(f"/admin/inference/model/{failing.model.pk}/change/").content.decode(),
    ]
    for page in pages:
        assert "circuit open (callers)" in page and "66.7 % errors" in page
    for page in pages[1:]:
        assert "IndexError: index out of range in self" in page


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match[1] for k, v in labels.items()):
            return float(match[2])
    return None


def test_prometheus_exports_each_versions_state_and_outcomes(failing, client) -> None:
    text = client.get("/metrics").content.decode()
    picky = {"model": "picky", "version": "1"}
    assert _sample(text, "sluice_version_circuit_state", **picky, state="open") == 1
    assert _sample(text, "sluice_version_circuit_state", **picky, state="closed") == 0
    assert _sample(text, "sluice_version_available", **picky) == 0
    assert _sample(text, "sluice_version_recent_requests", **picky) == 3
    assert _sample(text, "sluice_version_error_rate", **picky) == pytest.approx(2 / 3)
    assert (_sample(text, "sluice_version_latency_p99_seconds", **picky) or 0) > 0
    assert (
        _sample(text, "sluice_inference_outcomes_total", **picky, outcome="input_error") or 0
    ) >= 2
