from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tenants.models import Tenant, TenantAPIKey
from tenants.services import apikey_revoke

pytestmark = pytest.mark.django_db


def _run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()


def test_createtenant_creates_a_tenant_with_its_plan():
    assert _run("createtenant", "Initech", "--rpm", "30", "--models", "digits,sentiment") == (
        "initech"
    )
    tenant = Tenant.objects.get(slug="initech")
    assert tenant.requests_per_minute == 30
    assert tenant.allowed_models == ["digits", "sentiment"]
    assert tenant.allows_model("digits")
    assert not tenant.allows_model("chat")


def test_createtenant_refuses_a_duplicate_slug(tenant):
    with pytest.raises(CommandError, match="Slug already exists"):
        _run("createtenant", "Acme", "--slug", "acme")


def test_createapikey_prints_a_working_key_once(tenant, client_for):
    raw = _run("createapikey", "--tenant", "acme", "--scopes", "infer", "--expires", "30d")
    row = TenantAPIKey.objects.get(tenant=tenant)
    assert row.scopes == ["infer"]
    assert timedelta(days=29) < row.expiry_date - timezone.now() <= timedelta(days=30)
    assert raw not in row.hashed_key
    assert client_for(raw).get("/v1/tenant").status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenant", "nope"], "No tenant"),
        (["--tenant", "acme", "--scopes", "root"], "Unknown scopes"),
        (["--tenant", "acme", "--expires", "soon"], "--expires"),
    ],
)
def test_createapikey_explains_bad_input(tenant, args, message):
    with pytest.raises(CommandError, match=message):
        _run("createapikey", *args)


def test_demo_is_idempotent_and_replaces_a_dead_key(tmp_path, client_for):
    key_file = str(tmp_path / "demo-key")
    first = _run("demo", "--key-file", key_file)
    assert _run("demo", "--key-file", key_file) == first
    assert Tenant.objects.filter(slug="demo").count() == 1
    assert client_for(first).get("/v1/tenant").json()["slug"] == "demo"
    apikey_revoke(key=TenantAPIKey.objects.get(tenant__slug="demo"))
    second = _run("demo", "--key-file", key_file)
    assert second != first
    assert client_for(second).get("/v1/tenant").status_code == 200
    assert (tmp_path / "demo-key").stat().st_mode & 0o777 == 0o600
