"""Tenants, their plans and their API keys."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import ClassVar, cast

from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.utils import timezone
from rest_framework_api_key.crypto import KeyGenerator
from rest_framework_api_key.models import AbstractAPIKey, APIKeyManager

KEY_BRAND = "sk_live_"
SCOPES = ("infer", "jobs", "streams", "admin")


class Tenant(models.Model):
    """A customer of the platform; every tenant-owned row points here."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    is_active = models.BooleanField(default=True)
    requests_per_minute = models.PositiveIntegerField(default=600)
    concurrent_streams = models.PositiveIntegerField(default=10)
    monthly_request_quota = models.PositiveBigIntegerField(
        default=1_000_000, help_text="Requests per calendar month (UTC); 0 means unlimited."
    )
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model names this tenant may use; empty means all."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("slug",)

    def __str__(self) -> str:
        return self.slug

    def allows_model(self, name: str) -> bool:
        return not self.allowed_models or name in self.allowed_models


class BrandedKeyGenerator(KeyGenerator):
    """Keys look like ``sk_live_<prefix>.<secret>`` so secret scanners can recognise leaks.

    The library's SHA-512 hasher is used (keys are high-entropy; a password hasher would cost
    tens of milliseconds per request for no gain).
    """

    def generate(self) -> tuple[str, str, str]:
        prefix = self.get_prefix()
        key = f"{KEY_BRAND}{prefix}.{self.get_secret_key()}"
        return key, prefix, self.hash(key)


def parse_key(raw: str) -> str | None:
    """The lookup prefix of a presented key, or None if it is not shaped like one of ours."""
    if not raw.startswith(KEY_BRAND):
        return None
    prefix, dot, secret = raw[len(KEY_BRAND) :].partition(".")
    # Letters and digits, as generated: anything else is no key, never a lookup (with a NUL,
    # one PostgreSQL cannot run; gunicorn, daphne and uvicorn refuse NUL in headers anyway).
    if not dot or len(prefix) != 8 or not secret or not (prefix.isascii() and prefix.isalnum()):
        return None
    return prefix


class TenantAPIKeyManager(APIKeyManager):
    key_generator = BrandedKeyGenerator(prefix_length=8, secret_key_length=40)


class TenantAPIKey(AbstractAPIKey):
    """An API key of one tenant. Only a SHA-512 hash of the key is stored."""

    objects: ClassVar[TenantAPIKeyManager] = TenantAPIKeyManager()

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    scopes = models.JSONField(default=list, help_text=f"Any of: {', '.join(SCOPES)}.")
    requests_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Per-key limit; empty means the tenant's plan limit.",
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def fingerprint(self) -> str:
        """What logs and the admin show instead of the key: ``sk_live_<prefix>…``."""
        return f"{KEY_BRAND}{self.prefix}…"

    def revoke(self) -> None:
        # Revoking is one-way (the library refuses to un-revoke); a conditional update keeps
        # two concurrent revocations from both recording their own timestamp.
        now = timezone.now()
        TenantAPIKey.objects.filter(pk=self.pk, revoked=False).update(revoked=True, revoked_at=now)
        self.refresh_from_db(fields=["revoked", "revoked_at"])
        self._initial_revoked = self.revoked

    def rotate(self, *, grace: timedelta) -> tuple[TenantAPIKey, str]:
        """Issue a replacement with the same scopes; this key keeps working for ``grace``."""
        with transaction.atomic():
            # Locks the old row: two concurrent rotations must not both shorten its expiry
            # and leave two replacements.
            old = TenantAPIKey.objects.select_for_update().get(pk=self.pk)
            new, raw = cast(
                tuple[TenantAPIKey, str],
                TenantAPIKey.objects.create_key(
                    tenant=old.tenant,
                    name=old.name,
                    scopes=list(old.scopes),
                    requests_per_minute=old.requests_per_minute,
                    expiry_date=old.expiry_date,
                ),
            )
            ends = timezone.now() + grace
            if old.expiry_date is None or old.expiry_date > ends:
                old.expiry_date = ends
                old.save(update_fields=["expiry_date"])
        return new, raw

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def key_digest(raw: str) -> str:
    """Stable non-reversible id of a presented key, for cache keys and logs."""
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
