"""The registry's write API for operators: activate, promote, canary weights.

Staff sessions only, with the ``inference.change_modelversion`` permission (a tenant's key
manages nothing of the shared registry). Each change that gives a version traffic runs its
pre-activation check first; a failed check answers 422 ``version-check-failed`` with the
engine's error, and ``skip_check`` (the operator's reason) makes the change without it,
audited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions, serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.api.serializers import ModelInfoSerializer
from inference.catalog import selectors
from inference.models import ModelVersion
from inference.registry import services
from inference.registry.checks import CheckFailed


class IsRegistryOperator(BasePermission):
    """A staff session whose user may change model versions; 401 without credentials."""

    PERMISSION = "inference.change_modelversion"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not getattr(user, "is_authenticated", False):
            raise exceptions.NotAuthenticated()
        if request.auth is None and user.is_staff and user.has_perm(self.PERMISSION):
            return True
        raise exceptions.PermissionDenied(
            f"Registry changes need a staff session with the {self.PERMISSION} permission."
        )


class CheckRefused(exceptions.APIException):
    status_code = 422
    default_detail = "The version failed its pre-activation check."
    default_code = "version_check_failed"
    problem_slug = "version-check-failed"

    def __init__(self, failed: CheckFailed) -> None:
        super().__init__(failed.messages[0])
        self.problem_extensions = {"check": failed.report.detail()}


class ChangeSerializer(serializers.Serializer):
    skip_check = serializers.CharField(
        required=False,
        max_length=500,
        help_text="Make the change without the pre-activation check; the reason is audited.",
    )


class WeightsSerializer(ChangeSerializer):
    weights = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=100),
        allow_empty=False,
        help_text='Relative weights by version label, e.g. {"1": 90, "2": 10}.',
    )


class ChangeResponseSerializer(serializers.Serializer):
    model = ModelInfoSerializer()
    check = serializers.DictField(
        allow_null=True,
        help_text="How the versions given traffic were proven; null when none gained traffic.",
    )


Change = Callable[[dict[str, Any], str], "dict[str, Any] | None"]


def _answer(
    request: Request, name: str, body: type[serializers.Serializer], change: Change
) -> Response:
    """Validate the body, make the change as the session's user, answer the model as it is now
    and how the versions given traffic were proven."""
    found = body(data=request.data)
    found.is_valid(raise_exception=True)
    try:
        check = change(dict(found.validated_data), f"api:{request.user.get_username()}")
    except CheckFailed as exc:
        raise CheckRefused(exc) from exc
    model = selectors.model_for_tenant(name, None)
    return Response({"model": ModelInfoSerializer(model).data, "check": check})


def _version(name: str, version: str) -> ModelVersion:
    selectors.model_for_tenant(name, None)  # 404 for an unknown model
    try:
        return services.version_find(model_name=name, version=version)
    except ValidationError as exc:
        raise exceptions.NotFound(exc.messages[0]) from exc


class _VersionChangeView(APIView):
    """A change of one version by its service (``change``), checked and answered alike."""

    permission_classes = [IsRegistryOperator]
    change: Callable[..., Any]

    def post(self, request: Request, name: str, version: str) -> Response:
        target = _version(name, version)
        change = type(self).change
        return _answer(
            request,
            name,
            ChangeSerializer,
            lambda data, actor: change(
                version=target, actor=actor, skip_check=data.get("skip_check")
            ),
        )


@extend_schema_view(
    post=extend_schema(
        operation_id="models_versions_activate",
        request=ChangeSerializer,
        responses=ChangeResponseSerializer,
    )
)
class ActivateView(_VersionChangeView):
    """Activate a version (run on example inputs first)."""

    change = services.version_activate


@extend_schema_view(
    post=extend_schema(
        operation_id="models_versions_promote",
        request=ChangeSerializer,
        responses=ChangeResponseSerializer,
    )
)
class PromoteView(_VersionChangeView):
    """Make a version stable with all the traffic (checked first when it serves none)."""

    change = services.version_promote


class WeightsView(APIView):
    """Set canary weights; a version going from no traffic to some is checked first."""

    permission_classes = [IsRegistryOperator]

    @extend_schema(
        operation_id="models_weights", request=WeightsSerializer, responses=ChangeResponseSerializer
    )
    def post(self, request: Request, name: str) -> Response:
        model = selectors.model_for_tenant(name, None)
        return _answer(
            request,
            name,
            WeightsSerializer,
            lambda data, actor: services.model_set_weights(
                model=model,
                weights=dict(data["weights"]),
                actor=actor,
                skip_check=data.get("skip_check"),
            ),
        )
