from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import factory
from django.contrib.auth.models import Permission

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


def grant(user: Any, *permissions: str) -> Any:
    """Give ``user`` these ``app_label.codename`` permissions; the user as read again (Django
    caches a user object's permissions)."""
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return type(user).objects.get(pk=user.pk)
