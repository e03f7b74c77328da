from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import factory

from tenants.models import Tenant, TenantAPIKey
from tenants.services import apikey_create


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant-{n}")


def make_key(
    tenant: Tenant,
    *,
    scopes: Iterable[str] = ("infer",),
    expires_at: datetime | None = None,
    requests_per_minute: int | None = None,
    name: str = "test",
) -> tuple[TenantAPIKey, str]:
    return apikey_create(
        tenant=tenant,
        name=name,
        scopes=scopes,
        expires_at=expires_at,
        requests_per_minute=requests_per_minute,
    )
