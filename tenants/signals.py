"""Drop cached key contexts when a key or tenant changes (this process at once; others within
API_KEY_CACHE_SECONDS)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from tenants.models import Tenant, TenantAPIKey
from tenants.selectors import forget_key, forget_tenant


@receiver([post_save, post_delete], sender=TenantAPIKey)
def _key_changed(sender: type[TenantAPIKey], instance: TenantAPIKey, **kwargs: Any) -> None:
    forget_key(instance.prefix)


@receiver([post_save, post_delete], sender=Tenant)
def _tenant_changed(sender: type[Tenant], instance: Tenant, **kwargs: Any) -> None:
    forget_tenant(instance.pk)
