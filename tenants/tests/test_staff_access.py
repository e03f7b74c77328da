"""Staff sessions (the browsable API) reach API objects through Django model permissions: a
staff user without ``view_tenantapikey`` reads no keys, revoking needs ``change`` and rotating
``add`` and ``change``; superusers keep everything."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory, force_authenticate

from tenants.models import Tenant, TenantAPIKey
from tenants.scoping import for_request
from tenants.tests.factories import grant, make_key

pytestmark = pytest.mark.django_db


def refused(response: Any) -> None:
    assert response.status_code == 403, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == "urn:sluice:problem:permission-denied"


@pytest.fixture
def keys(tenant: Tenant, other_tenant: Tenant) -> list[TenantAPIKey]:
    return [make_key(tenant)[0], make_key(other_tenant)[0]]


def test_a_staff_user_without_permissions_reads_no_keys(
    staff_client: APIClient, keys: list[TenantAPIKey]
) -> None:
    refused(staff_client.get("/v1/keys"))
    refused(staff_client.get(f"/v1/keys/{keys[1].prefix}"))
    refused(staff_client.delete(f"/v1/keys/{keys[1].prefix}"))
    refused(staff_client.post(f"/v1/keys/{keys[1].prefix}/rotate"))
    assert not TenantAPIKey.objects.filter(revoked=True).exists()


def test_view_permission_reads_every_tenants_keys_and_no_more(
    staff_client: APIClient, staff_user: Any, keys: list[TenantAPIKey]
) -> None:
    grant(staff_user, "tenants.view_tenantapikey")
    listed = {k["prefix"] for k in staff_client.get("/v1/keys").json()["results"]}
    assert listed == {k.prefix for k in keys}
    assert staff_client.get(f"/v1/keys/{keys[1].prefix}").status_code == 200
    refused(staff_client.delete(f"/v1/keys/{keys[1].prefix}"))
    refused(staff_client.post(f"/v1/keys/{keys[1].prefix}/rotate"))


def test_revoking_needs_change_and_rotating_needs_add_and_change(
    staff_client: APIClient, staff_user: Any, keys: list[TenantAPIKey]
) -> None:
    user = grant(staff_user, "tenants.view_tenantapikey", "tenants.change_tenantapikey")
    refused(staff_client.post(f"/v1/keys/{keys[0].prefix}/rotate"))
    assert staff_client.delete(f"/v1/keys/{keys[1].prefix}").status_code == 204
    grant(user, "tenants.add_tenantapikey")
    assert staff_client.post(f"/v1/keys/{keys[0].prefix}/rotate").status_code == 201


def test_staff_never_create_keys_through_the_api(staff_client: APIClient, staff_user: Any) -> None:
    grant(staff_user, "tenants.view_tenantapikey", "tenants.add_tenantapikey")
    refused(staff_client.post("/v1/keys", {"name": "k", "scopes": ["infer"]}, format="json"))


def test_a_superuser_keeps_everything(keys: list[TenantAPIKey], django_user_model: Any) -> None:
    client = APIClient()
    client.force_login(django_user_model.objects.create_superuser("root", "r@x.io", "pw-1234!"))
    assert len(client.get("/v1/keys").json()["results"]) == 2
    assert client.delete(f"/v1/keys/{keys[1].prefix}").status_code == 204


def test_scoping_shows_a_staff_session_no_row_without_the_view_permission(
    staff_user: Any, keys: list[TenantAPIKey]
) -> None:
    def scoped(user: Any) -> int:
        raw = APIRequestFactory().get("/")
        force_authenticate(raw, user=user)
        request = Request(raw)
        request.user = user
        return for_request(TenantAPIKey.objects.all(), request).count()

    assert scoped(staff_user) == 0
    assert scoped(AnonymousUser()) == 0
    assert scoped(grant(staff_user, "tenants.view_tenantapikey")) == 2
