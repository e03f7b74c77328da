"""The registry's write API (inference/api/registry_views.py): staff sessions with the model
permission only; a failed pre-activation check is a 422 with the engine's error."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from inference.models import ModelEvent, ModelVersion
from inference.registry.builtin import DIGITS_OPTIONS
from inference.registry.services import version_register

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(django_user_model) -> APIClient:
    user = django_user_model.objects.create_user("operator", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_modelversion"))
    client = APIClient()
    client.force_login(user)
    return client


def _v2(digits_onnx: bytes, **options) -> ModelVersion:
    return version_register(
        model_name="digits",
        version="2",
        runtime="onnx",
        artifact=digits_onnx,
        runtime_options=options,
        actor="test",
    )


def test_it_refuses_to_activate_a_version_that_fails_its_check(operator, digits, digits_onnx):
    broken = _v2(digits_onnx)
    response = operator.post("/v1/models/digits/versions/2/activate", {}, format="json")
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:sluice:problem:version-check-failed"
    assert "KeyError: 'X'" in body["detail"] and "KeyError: 'X'" in body["check"]["error"]
    assert body["check"]["ok"] is False and body["check"]["examples"] == 1
    broken.refresh_from_db()
    assert broken.state == "draft"


def test_it_activates_and_weights_a_version_that_passes(operator, digits, digits_onnx) -> None:
    _v2(digits_onnx, **DIGITS_OPTIONS)
    activated = operator.post("/v1/models/digits/versions/2/activate", {}, format="json")
    assert activated.status_code == 200, activated.json()
    assert activated.json()["check"]["ok"] is True
    weighted = operator.post(
        "/v1/models/digits/weights", {"weights": {"1": 90, "2": 10}}, format="json"
    )
    assert weighted.status_code == 200, weighted.json()
    versions = {v["version"]: v["traffic_weight"] for v in weighted.json()["model"]["versions"]}
    assert versions == {"1": 90, "2": 10}
    assert ModelEvent.objects.get(action="weights").actor == "api:operator"


def test_it_skips_the_check_when_told_why_and_audits_it(operator, digits, digits_onnx) -> None:
    _v2(digits_onnx)
    response = operator.post(
        "/v1/models/digits/versions/2/promote", {"skip_check": "hotfix, checked by hand"}
    )
    assert response.status_code == 200, response.json()
    assert response.json()["check"] == {"skipped": "hotfix, checked by hand"}
    assert response.json()["model"]["stable_version"] == "2"
    event = ModelEvent.objects.get(action="check-skipped")
    assert event.actor == "api:operator" and event.detail["reason"] == "hotfix, checked by hand"


def test_tenants_and_staff_without_the_permission_change_nothing(
    api, staff_client, digits, digits_onnx
) -> None:
    _v2(digits_onnx, **DIGITS_OPTIONS)
    for client in (api, staff_client):
        response = client.post("/v1/models/digits/versions/2/activate", {}, format="json")
        assert response.status_code == 403
        assert response.json()["type"] == "urn:sluice:problem:permission-denied"
    assert APIClient().post("/v1/models/digits/weights", {}).status_code == 401
    assert ModelVersion.objects.get(version="2").state == "draft"


def test_it_answers_404_for_an_unknown_model_or_version(operator, digits) -> None:
    assert operator.post("/v1/models/nope/versions/1/activate", {}).status_code == 404
    assert operator.post("/v1/models/digits/versions/9/activate", {}).status_code == 404
    bad = operator.post("/v1/models/digits/weights", {"weights": {"1": 101}}, format="json")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "weights.1"
