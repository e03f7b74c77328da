from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from django.utils import timezone
from freezegun import freeze_time
from rest_framework.test import APIClient

from tenants.services import apikey_revoke
from tenants.tests.factories import make_key

pytestmark = pytest.mark.django_db


def _token(api: APIClient, **body) -> dict:
    response = api.post("/v1/auth/token", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_it_exchanges_a_key_for_a_short_lived_token(api):
    issued = _token(api)
    assert issued["token_type"] == "Bearer"
    assert issued["expires_in"] == 900
    header = jwt.get_unverified_header(issued["access_token"])
    assert header == {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    claims = jwt.decode(issued["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "sluice"
    assert claims["exp"] - claims["iat"] == 900
    assert _bearer(issued["access_token"]).get("/v1/tenant").json()["slug"] == "acme"


def test_it_rejects_an_expired_token(api):
    token = _token(api)["access_token"]
    with freeze_time(timezone.now() + timedelta(seconds=901)):
        response = _bearer(token).get("/v1/tenant")
    assert response.status_code == 401
    assert response.json()["detail"] == "Token has expired."


def test_it_rejects_a_token_for_another_audience(api, settings):
    token = _token(api)["access_token"]
    settings.JWT_AUDIENCE = "someone-else"
    response = _bearer(token).get("/v1/tenant")
    assert response.status_code == 401
    assert response.json()["detail"] == "Token is for another audience."


def _tamper(token: str, **changes) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


def test_it_rejects_a_tampered_token(api, other_tenant):
    token = _token(api)["access_token"]
    response = _bearer(_tamper(token, tid=other_tenant.pk)).get("/v1/tenant")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."


def test_it_rejects_a_token_signed_with_none_or_another_algorithm(api, key):
    claims = jwt.decode(_token(api)["access_token"], options={"verify_signature": False})
    unsigned = jwt.encode(claims, key=None, algorithm="none", headers={"kid": "k1"})
    assert _bearer(unsigned).get("/v1/tenant").status_code == 401
    hs512 = jwt.encode(
        claims, "test-only-secret-key-not-for-production", algorithm="HS512", headers={"kid": "k1"}
    )
    assert _bearer(hs512).get("/v1/tenant").status_code == 401


def test_it_rejects_an_unknown_kid_and_accepts_a_retired_one_during_rotation(api, settings):
    token = _token(api)["access_token"]
    settings.JWT_SIGNING_KEYS = {"k2": "new-secret", "k1": settings.JWT_SIGNING_KEYS["k1"]}
    settings.JWT_ACTIVE_KID = "k2"
    assert _bearer(token).get("/v1/tenant").status_code == 200
    assert jwt.get_unverified_header(_token(api)["access_token"])["kid"] == "k2"
    settings.JWT_SIGNING_KEYS = {"k2": "new-secret"}
    response = _bearer(token).get("/v1/tenant")
    assert response.status_code == 401
    assert response.json()["detail"] == "Token signed with an unknown key id."


def test_revoking_the_key_ends_its_tokens(api, tenant, client_for):
    row, raw = make_key(tenant, scopes=["infer"])
    token = _token(client_for(raw))["access_token"]
    assert _bearer(token).get("/v1/tenant").status_code == 200
    apikey_revoke(key=row)
    assert _bearer(token).get("/v1/tenant").status_code == 401


def test_a_token_can_be_narrowed_but_never_widened(tenant, client_for):
    _, raw = make_key(tenant, scopes=["infer", "admin"])
    narrowed = _token(client_for(raw), scopes=["infer"])
    assert narrowed["scopes"] == ["infer"]
    assert _bearer(narrowed["access_token"]).get("/v1/keys").status_code == 403
    _, infer_only = make_key(tenant, scopes=["infer"])
    widened = _token(client_for(infer_only), scopes=["infer", "admin"])
    assert widened["scopes"] == ["infer"]
    assert _bearer(widened["access_token"]).get("/v1/keys").status_code == 403


def test_a_token_cannot_mint_another_token(api):
    token = _token(api)["access_token"]
    response = _bearer(token).post("/v1/auth/token", {}, format="json")
    assert response.status_code == 403


def test_a_token_from_the_future_is_rejected(api, key, settings):
    now = datetime.now(UTC) + timedelta(hours=1)
    claims = {
        "iss": "sluice",
        "aud": "sluice",
        "sub": f"key:{key[0].prefix}",
        "tid": key[0].tenant_id,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(hours=1),
    }
    token = jwt.encode(
        claims, settings.JWT_SIGNING_KEYS["k1"], algorithm="HS256", headers={"kid": "k1"}
    )
    assert _bearer(token).get("/v1/tenant").status_code == 401
