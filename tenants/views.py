"""Tenant self-service API: who am I, my keys, tokens for browsers."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants import services
from tenants.models import TenantAPIKey
from tenants.scoping import TenantScopedMixin
from tenants.selectors import KeyContext
from tenants.serializers import (
    APIKeySerializer,
    CreatedAPIKeySerializer,
    TenantSerializer,
    TokenRequestSerializer,
    TokenSerializer,
)
from tenants.tokens import token_issue


def _tenant_ctx(request: Request) -> KeyContext:
    if not isinstance(request.auth, KeyContext):
        raise exceptions.PermissionDenied("This endpoint needs a tenant API key or token.")
    return request.auth


class TenantView(APIView):
    """The calling tenant and its plan."""

    @extend_schema(responses=TenantSerializer)
    def get(self, request: Request) -> Response:
        return Response(TenantSerializer(_tenant_ctx(request).tenant).data)


class TokenView(APIView):
    """Exchange an API key for a short-lived JWT (``Authorization: Bearer <token>``)."""

    @extend_schema(request=TokenRequestSerializer, responses={201: TokenSerializer})
    def post(self, request: Request) -> Response:
        ctx = _tenant_ctx(request)
        if ctx.via_token:
            raise exceptions.PermissionDenied("Tokens are issued for API keys, not for tokens.")
        body = TokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        wanted = body.validated_data.get("scopes")
        token, ttl = token_issue(ctx, scopes=frozenset(wanted) if wanted else None)
        granted = sorted(ctx.scopes & frozenset(wanted) if wanted else ctx.scopes)
        data = {"access_token": token, "token_type": "Bearer", "expires_in": ttl, "scopes": granted}
        return Response(data, status=status.HTTP_201_CREATED)


class APIKeyViewSet(
    TenantScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The tenant's API keys (scope ``admin``). ``DELETE`` revokes; the row stays for audit."""

    serializer_class = APIKeySerializer
    queryset = TenantAPIKey.objects.select_related("tenant").order_by("-created")
    lookup_field = "prefix"
    # The shape every prefix has: anything else (a NUL PostgreSQL cannot even compare) is no key.
    lookup_value_regex = "[A-Za-z0-9]{8}"
    required_scope = "admin"
    # Staff create keys in the admin (a key is shown once, to its tenant); through the API
    # they read, revoke (a change: the row stays) and rotate (a new key, the old one changed).
    staff_permissions = {
        "list": ("tenants.view_tenantapikey",),
        "retrieve": ("tenants.view_tenantapikey",),
        "destroy": ("tenants.view_tenantapikey", "tenants.change_tenantapikey"),
        "rotate": (
            "tenants.view_tenantapikey",
            "tenants.add_tenantapikey",
            "tenants.change_tenantapikey",
        ),
    }

    @extend_schema(responses={201: CreatedAPIKeySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = APIKeySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key, raw = services.apikey_create(
            tenant=_tenant_ctx(request).tenant,
            name=body.validated_data["name"],
            scopes=body.validated_data["scopes"],
            expires_at=body.validated_data.get("expiry_date"),
            requests_per_minute=body.validated_data.get("requests_per_minute"),
        )
        return Response(self._created(key, raw), status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: TenantAPIKey) -> None:
        services.apikey_revoke(key=instance)

    @extend_schema(request=None, responses={201: CreatedAPIKeySerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, prefix: str | None = None) -> Response:
        """A replacement key with the same scopes; this one keeps working for a grace period."""
        new, raw = services.apikey_rotate(key=self.get_object())
        return Response(self._created(new, raw), status=status.HTTP_201_CREATED)

    @staticmethod
    def _created(key: TenantAPIKey, raw: str) -> dict[str, Any]:
        data = dict(CreatedAPIKeySerializer(key).data)
        data["key"] = raw
        return data
