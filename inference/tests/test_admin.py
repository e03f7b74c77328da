from __future__ import annotations

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from inference.models import Model, ModelEvent, ModelVersion
from inference.registry.services import version_register
from inference.tests.conftest import make_version

pytestmark = pytest.mark.django_db


def test_it_registers_a_version_with_an_artifact_upload(admin_client, digits_onnx) -> None:
    model = Model.objects.create(name="uploaded", task="classification")
    response = admin_client.post(
        "/admin/inference/modelversion/add/",
        {
            "model": model.pk,
            "version": "1",
            "runtime": "onnx",
            "artifact": SimpleUploadedFile("m.onnx", digits_onnx),
            "runtime_options": "{}",
            "input_schema": "{}",
            "device": "cpu",
            "queue": "cpu",
            "max_batch_size": 8,
            "max_delay_ms": 5,
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    row = ModelVersion.objects.get(model=model)
    assert row.state == "draft"
    assert row.checksum == hashlib.sha256(digits_onnx).hexdigest()
    assert ModelEvent.objects.filter(version=row, action="register", actor="admin:admin").exists()


def test_it_refuses_an_onnx_version_without_an_artifact(admin_client) -> None:
    model = Model.objects.create(name="empty")
    response = admin_client.post(
        "/admin/inference/modelversion/add/",
        {
            "model": model.pk,
            "version": "1",
            "runtime": "onnx",
            "runtime_options": "{}",
            "input_schema": "{}",
            "device": "cpu",
            "queue": "cpu",
            "max_batch_size": 8,
            "max_delay_ms": 5,
        },
    )
    assert response.status_code == 200 and "needs its .onnx artifact" in response.content.decode()


def test_it_activates_promotes_and_retires_from_the_admin(admin_client) -> None:
    v1 = make_version()
    v2 = make_version(version="2", activate=False)
    url = "/admin/inference/modelversion/"
    admin_client.post(url, {"action": "activate", "_selected_action": [v2.pk]})
    admin_client.post(url, {"action": "promote", "_selected_action": [v2.pk]})
    v1.model.refresh_from_db()
    assert v1.model.stable_version_id == v2.pk
    admin_client.post(url, {"action": "retire", "_selected_action": [v1.pk]})
    v1.refresh_from_db()
    assert v1.state == "retired"
    actions = list(ModelEvent.objects.filter(model=v1.model).values_list("action", flat=True))
    assert {"activate", "promote", "retire"} <= set(actions)


def test_it_sets_canary_weights_from_the_admin_list(admin_client) -> None:
    v1 = make_version()
    v2 = make_version(version="2")
    form = {
        "form-TOTAL_FORMS": "2",
        "form-INITIAL_FORMS": "2",
        "form-0-id": str(v2.pk),
        "form-0-traffic_weight": "25",
        "form-1-id": str(v1.pk),
        "form-1-traffic_weight": "100",
        "_save": "Save",
    }
    response = admin_client.post("/admin/inference/modelversion/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    v2.refresh_from_db()
    assert v2.traffic_weight == 25
    event = ModelEvent.objects.filter(action="weights").get()
    assert event.detail["weights"] == {"2": 25}
    assert event.detail["check"]["ok"] is True  # 2 went from no traffic to some: checked


def test_it_shows_the_audit_log_on_the_model_page(admin_client) -> None:
    v1 = make_version()
    page = admin_client.get(f"/admin/inference/model/{v1.model.pk}/change/").content.decode()
    assert "activate" in page and "available" in page


def test_it_logs_edits_of_a_version(admin_client) -> None:
    v1 = make_version()
    response = admin_client.post(
        f"/admin/inference/modelversion/{v1.pk}/change/",
        {
            "runtime_options": '{"handler": "inference.tests.fakes.Doubler", "sleep": 0}',
            "input_schema": "{}",
            "device": "cpu",
            "queue": "cpu",
            "max_batch_size": 16,
            "max_delay_ms": 5,
            "traffic_weight": 100,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    v1.refresh_from_db()
    assert v1.max_batch_size == 16
    event = ModelEvent.objects.filter(action="edit").get()
    assert set(event.detail["fields"]) == {"runtime_options", "input_schema", "max_batch_size"}


def test_the_admin_shows_why_a_check_refused_an_activation(admin_client, digits, digits_onnx):
    broken = version_register(
        model_name="digits", version="2", runtime="onnx", artifact=digits_onnx, actor="test"
    )
    response = admin_client.post(
        "/admin/inference/modelversion/",
        {"action": "activate", "_selected_action": [broken.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "check failed" in page and "KeyError: &#x27;X&#x27;" in page
    broken.refresh_from_db()
    assert broken.state == "draft"


def test_the_admin_changes_without_the_check_only_with_a_reason(admin_client, digits, digits_onnx):
    broken = version_register(
        model_name="digits", version="2", runtime="onnx", artifact=digits_onnx, actor="test"
    )
    url = "/admin/inference/modelversion/"
    asked = admin_client.post(url, {"action": "skip_check", "_selected_action": [broken.pk]})
    assert asked.status_code == 200 and "without the pre-activation check" in asked.content.decode()
    no_reason = {
        "action": "skip_check",
        "_selected_action": [broken.pk],
        "apply": "1",
        "change": "activate",
        "reason": "",
    }
    assert admin_client.post(url, no_reason).status_code == 200  # the form again
    broken.refresh_from_db()
    assert broken.state == "draft"
    done = admin_client.post(url, {**no_reason, "reason": "checked on staging"}, follow=True)
    assert "check SKIPPED (audited): checked on staging" in done.content.decode()
    broken.refresh_from_db()
    assert broken.state == "active"
    event = ModelEvent.objects.get(action="check-skipped")
    assert event.actor == "admin:admin" and event.detail["reason"] == "checked on staging"
