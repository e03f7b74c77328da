"""The one place tenant-owned querysets are narrowed to the request's tenant."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Model, QuerySet
from rest_framework.request import Request

from tenants.permissions import is_staff_session, may_view
from tenants.selectors import KeyContext

M = TypeVar("M", bound=Model)


def for_request(queryset: QuerySet[M], request: Request, *, field: str = "tenant") -> QuerySet[M]:
    """Rows of the request's tenant only; a staff session sees every tenant's rows if it
    holds the model's ``view`` permission. Anything else sees nothing, so a forgotten
    permission class (or a view that declares too little) cannot leak rows."""
    if isinstance(request.auth, KeyContext):
        return queryset.filter(**{f"{field}_id": request.auth.tenant.pk})
    if is_staff_session(request) and may_view(request.user, queryset.model):
        return queryset
    return queryset.none()


class TenantScopedMixin:
    """For generic views and viewsets: another tenant's object is a 404, never a 403."""

    tenant_field = "tenant"

    def get_queryset(self) -> QuerySet[Any]:
        queryset = super().get_queryset()  # type: ignore[misc]
        return for_request(queryset, self.request, field=self.tenant_field)  # type: ignore[attr-defined]
