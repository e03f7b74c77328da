"""Control plane for tenants and keys. A new or rotated key is shown once, in a message."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from tenants import services
from tenants.models import Tenant, TenantAPIKey


def _show_once(request: HttpRequest, key: TenantAPIKey, raw: str) -> None:
    messages.warning(
        request,
        format_html(
            "The API key for <b>{}</b> is <code>{}</code> — copy it now, it will not be shown "
            "again.",
            key.name,
            raw,
        ),
    )


class APIKeyInline(admin.TabularInline):
    model = TenantAPIKey
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("name", "prefix", "scopes", "expiry_date", "revoked", "last_used_at", "created")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are created on the key page, where the plaintext can be shown


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "is_active", "requests_per_minute", "monthly_request_quota")
    list_filter = ("is_active",)
    search_fields = ("slug", "name")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [APIKeyInline]


@admin.register(TenantAPIKey)
class TenantAPIKeyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "fingerprint",
        "tenant",
        "scopes",
        "created",
        "expiry_date",
        "last_used_at",
        "revoked",
    )
    list_filter = ("revoked", "tenant", "created")
    search_fields = ("name", "prefix", "tenant__slug", "tenant__name")
    list_select_related = ("tenant",)
    actions = ("revoke_keys", "rotate_keys")
    readonly_fields = ("prefix", "created", "last_used_at", "revoked", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        fields = tuple(self.readonly_fields)
        return (*fields, "tenant") if obj is not None else fields

    def save_model(self, request: HttpRequest, obj: TenantAPIKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = services.apikey_create(
            tenant=obj.tenant,
            name=obj.name,
            scopes=obj.scopes,
            expires_at=obj.expiry_date,
            requests_per_minute=obj.requests_per_minute,
        )
        obj.pk, obj.prefix = key.pk, key.prefix
        _show_once(request, key, raw)

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[TenantAPIKey]) -> None:
        keys = list(queryset.filter(revoked=False))
        for key in keys:
            services.apikey_revoke(key=key)
        self.message_user(request, f"Revoked {len(keys)} key(s).", messages.SUCCESS)

    @admin.action(description="Rotate selected keys (old ones expire after the grace period)")
    def rotate_keys(self, request: HttpRequest, queryset: QuerySet[TenantAPIKey]) -> None:
        for key in queryset.filter(revoked=False):
            new, raw = services.apikey_rotate(key=key)
            _show_once(request, new, raw)
