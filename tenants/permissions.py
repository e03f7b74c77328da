"""Who may call what: a tenant credential with the view's scope, or a staff session with the
Django model permissions of what the view reads or changes."""

from __future__ import annotations

from typing import Any

from django.db.models import Model
from rest_framework import exceptions
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from tenants.selectors import KeyContext

# REST framework's OPTIONS answer describes the view and HEAD is a GET without the body: both
# need what reading needs.
_READS_LIKE_GET = ("HEAD", "OPTIONS")


def is_staff_session(request: Request) -> bool:
    return bool(getattr(request.user, "is_staff", False)) and request.auth is None


def staff_permissions(view: Any, method: str) -> tuple[str, ...] | None:
    """The model permissions a staff session needs for ``method`` on ``view`` (its
    ``staff_permissions``, by viewset action or by HTTP method), or None: staff may not."""
    declared: dict[str, tuple[str, ...]] = getattr(view, "staff_permissions", {})
    action = getattr(view, "action", None)
    if action is not None and action in declared:
        return declared[action]
    return declared.get("GET" if method in _READS_LIKE_GET else method)


def may_view(user: Any, model: type[Model]) -> bool:
    """Whether a staff user holds ``<app>.view_<model>`` (superusers hold every permission)."""
    meta = model._meta
    return bool(user.has_perm(f"{meta.app_label}.view_{meta.model_name}"))


class IsTenant(BasePermission):
    """A key or token with ``view.required_scope`` (if the view names one). A staff session
    (the browsable API) passes with the model permissions the view declares for the method in
    ``staff_permissions`` — ``{"GET": ("jobs.view_job",), "POST": ("jobs.change_job",)}``, or
    by action on a viewset — and none where it declares none; superusers hold every
    permission. Missing credentials → 401, a missing scope or permission → 403."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if is_staff_session(request):
            needed = staff_permissions(view, str(request.method))
            if needed is None:
                raise exceptions.PermissionDenied("This endpoint needs a tenant's API key.")
            if not request.user.has_perms(needed):
                raise exceptions.PermissionDenied(
                    f"Your staff account lacks the permission {', '.join(needed)}."
                )
            return True
        ctx = request.auth
        if not isinstance(ctx, KeyContext):
            raise exceptions.NotAuthenticated()
        scope = getattr(view, "required_scope", None)
        if scope and not ctx.has_scope(scope):
            raise exceptions.PermissionDenied(f"This API key lacks the '{scope}' scope.")
        return True
