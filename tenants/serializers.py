from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from tenants.models import SCOPES, Tenant, TenantAPIKey
from tenants.services import validate_scopes


class TenantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = (
            "slug",
            "name",
            "requests_per_minute",
            "concurrent_streams",
            "monthly_request_quota",
            "allowed_models",
        )
        read_only_fields = fields


class APIKeySerializer(serializers.ModelSerializer):
    expires_at = serializers.DateTimeField(
        source="expiry_date", required=False, allow_null=True, default=None
    )
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=SCOPES), allow_empty=False)

    class Meta:
        model = TenantAPIKey
        fields: tuple[str, ...] = (
            "prefix",
            "name",
            "scopes",
            "requests_per_minute",
            "expires_at",
            "created",
            "last_used_at",
            "revoked",
            "revoked_at",
        )
        read_only_fields = ("prefix", "created", "last_used_at", "revoked", "revoked_at")
        extra_kwargs = {"name": {"required": True, "allow_blank": False}}

    def validate_scopes(self, value: list[str]) -> list[str]:
        try:
            return validate_scopes(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc


class CreatedAPIKeySerializer(APIKeySerializer):
    """The answer to a create or rotate: the one and only time ``key`` is shown."""

    key = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(APIKeySerializer.Meta):
        fields = ("key", *APIKeySerializer.Meta.fields)


class TokenRequestSerializer(serializers.Serializer):
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=SCOPES),
        required=False,
        help_text="Narrow the token to these scopes (default: all of the key's).",
    )


class TokenSerializer(serializers.Serializer):
    access_token = serializers.CharField()
    token_type = serializers.CharField()
    expires_in = serializers.IntegerField()
    scopes = serializers.ListField(child=serializers.CharField())
