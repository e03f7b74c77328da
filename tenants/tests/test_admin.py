from __future__ import annotations

import re

import pytest

from tenants.models import TenantAPIKey

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "r@x.io", "pw-12345!"))
    return client


def test_the_admin_is_staff_only(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("plain"))
    assert client.get("/admin/tenants/tenantapikey/").status_code == 302


def test_rotate_action_shows_the_new_key_once_and_keeps_the_old_for_grace(
    admin_client, key, client_for
):
    row, old = key
    response = admin_client.post(
        "/admin/tenants/tenantapikey/",
        {"action": "rotate_keys", "_selected_action": [row.pk]},
        follow=True,
    )
    new = re.search(r"sk_live_[^<\s]+", response.content.decode()).group(0)
    assert new != old
    assert client_for(new).get("/v1/tenant").status_code == 200
    assert client_for(old).get("/v1/tenant").status_code == 200
    row.refresh_from_db()
    assert row.expiry_date is not None
    assert TenantAPIKey.objects.filter(tenant=row.tenant).count() == 2


def test_search_and_filters_work(admin_client, key):
    page = admin_client.get("/admin/tenants/tenantapikey/", {"q": key[0].prefix})
    assert key[0].prefix in page.content.decode()
    assert (
        admin_client.get("/admin/tenants/tenantapikey/", {"revoked__exact": "1"}).status_code == 200
    )
    assert admin_client.get("/admin/tenants/tenant/", {"q": "acme"}).status_code == 200
