"""Staff sessions see and try models only with ``inference.view_model``."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tenants.tests.factories import grant

pytestmark = pytest.mark.django_db


def test_a_staff_user_without_view_model_sees_and_runs_no_model(
    staff_client: APIClient, staff_user: Any, doubler: Any, eager: None
) -> None:
    calls = (
        lambda: staff_client.get("/v1/models"),
        lambda: staff_client.get("/v1/models/doubler"),
        lambda: staff_client.post("/v1/models/doubler/infer", {"input": {"x": 2}}, format="json"),
        lambda: staff_client.get("/v2/models/doubler"),
    )
    for call in calls:
        response = call()
        assert response.status_code == 403, response.content
        assert response.json()["type"] == "urn:sluice:problem:permission-denied"
    grant(staff_user, "inference.view_model")
    assert [m["id"] for m in staff_client.get("/v1/models").json()["data"]] == ["doubler"]
    assert calls[2]().json()["output"] == {"y": 4}
