from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone
from freezegun import freeze_time
from rest_framework.test import APIClient

from tenants.models import KEY_BRAND, TenantAPIKey
from tenants.services import apikey_revoke
from tenants.tests.factories import grant, make_key

pytestmark = pytest.mark.django_db


def _problem(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    return body


def test_it_creates_a_branded_key_and_shows_it_once(api):
    response = api.post("/v1/keys", {"name": "ci", "scopes": ["infer"]}, format="json")
    assert response.status_code == 201
    raw = response.json()["key"]
    assert raw.startswith(KEY_BRAND)
    row = TenantAPIKey.objects.get(prefix=response.json()["prefix"])
    assert raw not in row.hashed_key and row.hashed_key.startswith("sha512$$")
    listed = api.get("/v1/keys").json()["results"]
    assert all("key" not in item for item in listed)
    assert api.get(f"/v1/keys/{row.prefix}").json().get("key") is None


def test_it_authenticates_with_x_api_key_and_bearer(key):
    raw = key[1]
    client = APIClient()
    assert client.get("/v1/tenant", HTTP_X_API_KEY=raw).json()["slug"] == "acme"
    assert client.get("/v1/tenant", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 200


def test_it_answers_401_without_credentials(client):
    body = _problem(client.get("/v1/tenant"), 401)
    assert body["type"] == "urn:sluice:problem:not-authenticated"


@pytest.mark.parametrize(
    "raw",
    ["garbage", "sk_live_short.x", "sk_live_abcdefgh.wrongsecret", "Basic abc"],
)
def test_it_rejects_malformed_and_unknown_keys(client, key, raw):
    _problem(client.get("/v1/tenant", HTTP_X_API_KEY=raw), 401)


def test_it_rejects_the_right_prefix_with_a_wrong_secret(client, key):
    row, _ = key
    forged = f"{KEY_BRAND}{row.prefix}.{'x' * 40}"
    assert _problem(client.get("/v1/tenant", HTTP_X_API_KEY=forged), 401)["detail"] == (
        "Invalid API key."
    )


def test_it_rejects_expired_key(client, tenant):
    _, raw = make_key(tenant, expires_at=timezone.now() + timedelta(hours=1))
    assert client.get("/v1/tenant", HTTP_X_API_KEY=raw).status_code == 200
    with freeze_time(timezone.now() + timedelta(hours=2)):
        body = _problem(client.get("/v1/tenant", HTTP_X_API_KEY=raw), 401)
    assert body["detail"] == "API key has expired."


def test_it_rejects_revoked_key_at_once(client, api, tenant):
    row, raw = make_key(tenant)
    assert client.get("/v1/tenant", HTTP_X_API_KEY=raw).status_code == 200  # now cached
    assert api.delete(f"/v1/keys/{row.prefix}").status_code == 204
    body = _problem(client.get("/v1/tenant", HTTP_X_API_KEY=raw), 401)
    assert body["detail"] == "API key has been revoked."
    row.refresh_from_db()
    assert row.revoked and row.revoked_at is not None


def test_it_rejects_keys_of_an_inactive_tenant(client, key, tenant):
    assert client.get("/v1/tenant", HTTP_X_API_KEY=key[1]).status_code == 200
    tenant.is_active = False
    tenant.save()
    assert _problem(client.get("/v1/tenant", HTTP_X_API_KEY=key[1]), 401)["detail"] == (
        "Tenant is inactive."
    )


def test_it_forbids_a_key_without_the_scope(client_for, tenant):
    _, raw = make_key(tenant, scopes=["infer"])
    body = _problem(client_for(raw).get("/v1/keys"), 403)
    assert "'admin' scope" in body["detail"]


def test_it_records_last_used_at_once_a_minute(client, tenant, django_assert_num_queries):
    row, raw = make_key(tenant)
    assert row.last_used_at is None
    client.get("/v1/tenant", HTTP_X_API_KEY=raw)
    row.refresh_from_db()
    first = row.last_used_at
    assert first is not None
    with django_assert_num_queries(0):
        client.get("/v1/tenant", HTTP_X_API_KEY=raw)
    row.refresh_from_db()
    assert row.last_used_at == first
    with freeze_time(timezone.now() + timedelta(seconds=61)):
        client.get("/v1/tenant", HTTP_X_API_KEY=raw)
    row.refresh_from_db()
    assert row.last_used_at > first


def test_cache_only_verification_asks_for_the_database_instead_of_querying(
    tenant, django_assert_num_queries
):
    """What the unary server's loop relies on (inference.api.frontdoor): within cache_only()
    a key is verified from the process's cache or NotCached is raised — never a query."""
    from tenants.authentication import authenticate_credential
    from tenants.selectors import NotCached, cache_only, forget_key

    row, raw = make_key(tenant)
    forget_key(row.prefix)
    with django_assert_num_queries(0), cache_only(), pytest.raises(NotCached):
        authenticate_credential(raw)  # not cached yet
    authenticate_credential(raw)  # cached, and last_used_at written
    with django_assert_num_queries(0), cache_only():
        assert authenticate_credential(raw).key_id == row.pk
    with (
        freeze_time(timezone.now() + timedelta(seconds=61)),
        django_assert_num_queries(0),
        cache_only(),
        pytest.raises(NotCached),
    ):
        authenticate_credential(raw)  # last_used_at is due: an UPDATE


def test_rotation_issues_a_new_key_and_keeps_the_old_one_for_the_grace(api, client, tenant):
    row, raw = make_key(tenant, scopes=["infer", "jobs"])
    response = api.post(f"/v1/keys/{row.prefix}/rotate")
    assert response.status_code == 201
    new = response.json()
    assert new["scopes"] == ["infer", "jobs"] and new["prefix"] != row.prefix
    assert client.get("/v1/tenant", HTTP_X_API_KEY=new["key"]).status_code == 200
    assert client.get("/v1/tenant", HTTP_X_API_KEY=raw).status_code == 200
    with freeze_time(timezone.now() + timedelta(hours=25)):
        assert client.get("/v1/tenant", HTTP_X_API_KEY=raw).status_code == 401
        assert client.get("/v1/tenant", HTTP_X_API_KEY=new["key"]).status_code == 200


def test_a_revoked_key_cannot_be_rotated(api, tenant):
    row, _ = make_key(tenant)
    apikey_revoke(key=row)
    assert _problem(api.post(f"/v1/keys/{row.prefix}/rotate"), 422)["errors"]


def test_it_validates_new_keys_field_by_field(api):
    body = _problem(api.post("/v1/keys", {"scopes": ["nope"]}, format="json"), 422)
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"name", "scopes[0]"}


def test_keys_never_reach_the_logs(client, key, caplog):
    caplog.set_level(logging.DEBUG)
    client.get("/v1/tenant", HTTP_X_API_KEY=key[1])
    client.get("/v1/tenant", HTTP_X_API_KEY=key[1][:-1] + "X")
    assert caplog.records
    secret = key[1].split(".")[1]
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in str(record.__dict__)


def test_other_tenants_keys_are_404(api, key, assert_cross_tenant_404):
    prefix = key[0].prefix
    assert api.get(f"/v1/keys/{prefix}").status_code == 200
    assert_cross_tenant_404("get", f"/v1/keys/{prefix}")
    assert_cross_tenant_404("delete", f"/v1/keys/{prefix}")
    assert_cross_tenant_404("post", f"/v1/keys/{prefix}/rotate")
    key[0].refresh_from_db()
    assert not key[0].revoked


def test_a_tenant_lists_only_its_own_keys(api, other_api, key):
    mine = {k["prefix"] for k in api.get("/v1/keys").json()["results"]}
    theirs = {k["prefix"] for k in other_api.get("/v1/keys").json()["results"]}
    assert key[0].prefix in mine and not mine & theirs


def test_staff_browse_the_api_with_a_session(staff_client, staff_user, key):
    grant(staff_user, "tenants.view_tenantapikey")
    response = staff_client.get("/v1/keys", HTTP_ACCEPT="text/html")
    assert response.status_code == 200 and b"Api Key List" in response.content


@pytest.mark.parametrize("prefix", ["a%00bcdefg", "abc", "abcdefghij", "abcd%C3%A9fgh"])
def test_a_prefix_no_key_can_have_is_a_404(api, prefix):
    for response in (api.get(f"/v1/keys/{prefix}"), api.delete(f"/v1/keys/{prefix}")):
        assert response.status_code == 404
        assert response["Content-Type"] == "application/problem+json"


def test_a_presented_key_with_a_nul_is_refused_not_looked_up(key):
    client = APIClient()
    for header in ("sk_live_a\x00bcdefg.secret", f"{key[1][:-1]}\x00"):
        response = client.get("/v1/tenant", HTTP_X_API_KEY=header)
        assert response.status_code == 401, response.content
        assert response.json()["type"] == "urn:sluice:problem:authentication-failed"
