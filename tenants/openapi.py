"""OpenAPI description of the tenant credentials (loaded by TenantsConfig.ready)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class TenantKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.TenantKeyAuthentication"
    name = ["ApiKeyAuth", "BearerAuth"]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (sk_live_…) or a token from POST /v1/auth/token.",
            },
        ]
