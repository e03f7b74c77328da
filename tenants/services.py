"""Writes: tenants and their keys. Views, admin and commands call these, nothing lower."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import slugify

from tenants.models import SCOPES, Tenant, TenantAPIKey
from tenants.selectors import forget_key


def tenant_create(
    *,
    name: str,
    slug: str | None = None,
    requests_per_minute: int | None = None,
    concurrent_streams: int | None = None,
    monthly_request_quota: int | None = None,
    allowed_models: Iterable[str] = (),
) -> Tenant:
    tenant = Tenant(name=name, slug=slug or slugify(name), allowed_models=list(allowed_models))
    for field, value in (
        ("requests_per_minute", requests_per_minute),
        ("concurrent_streams", concurrent_streams),
        ("monthly_request_quota", monthly_request_quota),
    ):
        if value is not None:
            setattr(tenant, field, value)
    tenant.full_clean()
    tenant.save()
    return tenant


def validate_scopes(scopes: Iterable[str]) -> list[str]:
    cleaned = sorted({s.strip() for s in scopes if s.strip()})
    unknown = [s for s in cleaned if s not in SCOPES]
    if unknown:
        raise ValidationError(f"Unknown scopes {unknown}; choose from {list(SCOPES)}.")
    if not cleaned:
        raise ValidationError("A key needs at least one scope.")
    return cleaned


def apikey_create(
    *,
    tenant: Tenant,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
    requests_per_minute: int | None = None,
) -> tuple[TenantAPIKey, str]:
    """A new key and its plaintext, which exists only in this return value: show it once."""
    created = TenantAPIKey.objects.create_key(
        tenant=tenant,
        name=name,
        scopes=validate_scopes(scopes),
        expiry_date=expires_at,
        requests_per_minute=requests_per_minute,
    )
    return cast(tuple[TenantAPIKey, str], created)


def apikey_revoke(*, key: TenantAPIKey) -> None:
    key.revoke()
    forget_key(key.prefix)  # a conditional UPDATE sends no post_save signal


def apikey_rotate(*, key: TenantAPIKey) -> tuple[TenantAPIKey, str]:
    """A replacement key; the old one keeps working for API_KEY_ROTATION_GRACE_HOURS."""
    if key.revoked:
        raise ValidationError("A revoked key cannot be rotated.")
    return key.rotate(grace=timedelta(hours=settings.API_KEY_ROTATION_GRACE_HOURS))


@transaction.atomic
def demo_load(*, name: str = "Demo", slug: str = "demo") -> Tenant:
    """The demo tenant (idempotent)."""
    tenant, _ = Tenant.objects.get_or_create(
        slug=slug, defaults={"name": name, "requests_per_minute": 600}
    )
    return tenant
