"""DRF authentication: an API key or a JWT from ``Authorization: Bearer`` or ``X-API-Key``."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from tenants.models import KEY_BRAND
from tenants.selectors import KeyContext, key_verify
from tenants.tokens import token_verify


@dataclass(frozen=True)
class TenantPrincipal:
    """``request.user`` for key- and token-authenticated requests (not a Django user)."""

    ctx: KeyContext
    is_authenticated: bool = True
    is_active: bool = True
    is_staff: bool = False
    is_anonymous: bool = False

    @property
    def pk(self) -> str:
        return f"key:{self.ctx.prefix}"


def presented_credential(request: HttpRequest) -> str | None:
    """The raw key or token the client sent, if any."""
    header = request.META.get("HTTP_X_API_KEY")
    if header:
        return str(header).strip()
    auth = str(request.META.get("HTTP_AUTHORIZATION", ""))
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def authenticate_credential(raw: str) -> KeyContext:
    """Resolve a key or token to its context (also used by WebSocket and SSE entry points)."""
    if raw.startswith(KEY_BRAND):
        return key_verify(raw)
    if raw.count(".") == 2:
        return token_verify(raw)
    raise exceptions.AuthenticationFailed("Credentials are neither an API key nor a token.")


class TenantKeyAuthentication(BaseAuthentication):
    """Sets ``request.tenant`` once per request; 401 for bad, expired or revoked credentials."""

    def authenticate(self, request: Request) -> tuple[TenantPrincipal, KeyContext] | None:
        raw = presented_credential(request._request)
        if raw is None:
            return None
        ctx = authenticate_credential(raw)
        request._request.tenant = ctx.tenant  # type: ignore[attr-defined]
        return TenantPrincipal(ctx), ctx

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="sluice"'
