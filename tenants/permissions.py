"""Who may call what: a tenant credential with the view's scope, or a staff session."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from tenants.selectors import KeyContext


def is_staff_session(request: Request) -> bool:
    return bool(getattr(request.user, "is_staff", False)) and request.auth is None


class IsTenant(BasePermission):
    """A key or token with ``view.required_scope`` (if the view names one); staff sessions
    pass so the browsable API works for operators. Missing credentials → 401, a missing
    scope → 403."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if is_staff_session(request):
            return True
        ctx = request.auth
        if not isinstance(ctx, KeyContext):
            raise exceptions.NotAuthenticated()
        scope = getattr(view, "required_scope", None)
        if scope and not ctx.has_scope(scope):
            raise exceptions.PermissionDenied(f"This API key lacks the '{scope}' scope.")
        return True
