"""Control plane for the model registry: register a version with an upload, activate, set
canary weights (editable in the list), promote, roll back, retire. Every change goes through
:mod:`inference.services` and lands in the audit log."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from inference import selectors, services
from inference.models import Model, ModelEvent, ModelVersion


def _actor(request: HttpRequest) -> str:
    return f"admin:{getattr(request.user, 'username', '?')}"


class VersionHealth:
    """Columns of a version's state: whether it would be served now, its circuit and its
    recent outcomes (over ``INFERENCE_HEALTH_WINDOW_SECONDS``), with the last error's text."""

    @staticmethod
    def _state(obj: ModelVersion) -> selectors.VersionState:
        return selectors.version_states([obj])[obj.pk]

    @admin.display(description="availability")
    def availability(self, obj: ModelVersion) -> str:
        return self._state(obj).unavailable or "available"

    @admin.display(description="circuit / recent")
    def health(self, obj: ModelVersion) -> str:
        return self._state(obj).summary()

    @admin.display(description="last error")
    def last_error(self, obj: ModelVersion) -> str:
        return self._state(obj).last_error() or "-"


class VersionInline(VersionHealth, admin.TabularInline):
    model = ModelVersion
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "version",
        "runtime",
        "state",
        "traffic_weight",
        "is_shadow",
        "availability",
        "health",
        "last_error",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # versions are registered on their own page, with the artifact upload


class EventInline(admin.TabularInline):
    model = ModelEvent
    extra = 0
    can_delete = False
    fields = ("created_at", "action", "version", "actor", "detail")
    readonly_fields = fields
    ordering = ("-created_at",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ("name", "task", "stable_version", "sticky_routing", "created_at")
    search_fields = ("name", "description")
    readonly_fields = ("stable_version", "previous_stable", "created_at")
    inlines = [VersionInline, EventInline]
    actions = ("rollback",)

    @admin.action(description="Roll back selected models (cut canaries / undo last promotion)")
    def rollback(self, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        for model in queryset:
            try:
                target = services.model_rollback(model=model, actor=_actor(request))
            except ValidationError as exc:
                self.message_user(request, f"{model}: {'; '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(request, f"{model}: all traffic on {target.version}.")


@admin.register(ModelVersion)
class ModelVersionAdmin(VersionHealth, admin.ModelAdmin):
    list_display = (
        "__str__",
        "runtime",
        "device",
        "queue",
        "state",
        "traffic_weight",
        "is_shadow",
        "is_stable",
        "availability",
        "health",
        "created_at",
    )
    list_editable = ("traffic_weight",)
    list_filter = ("state", "runtime", "device", "model")
    list_select_related = ("model",)
    search_fields = ("model__name", "version")
    readonly_fields = (
        "checksum",
        "state",
        "availability",
        "health",
        "last_error",
        "created_at",
        "updated_at",
    )
    actions = ("activate", "promote", "retire", "make_shadow", "clear_shadow")
    fields = (
        "model",
        "version",
        "runtime",
        "artifact",
        "checksum",
        "runtime_options",
        "input_schema",
        "device",
        "queue",
        "max_batch_size",
        "max_delay_ms",
        "state",
        "traffic_weight",
        "availability",
        "health",
        "last_error",
        "created_at",
        "updated_at",
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        fields = tuple(self.readonly_fields)
        if obj is not None:  # an artifact is immutable once registered: register a new version
            return (*fields, "model", "version", "runtime", "artifact")
        return (*fields, "traffic_weight")

    @admin.display(boolean=True, description="stable")
    def is_stable(self, obj: ModelVersion) -> bool:
        return obj.model.stable_version_id == obj.pk

    def save_model(self, request: HttpRequest, obj: ModelVersion, form: Any, change: bool) -> None:
        if not change:
            services.version_checksum_refresh(version=obj)
            services.version_schema_derive(version=obj)
            super().save_model(request, obj, form, change)
            ModelEvent.record(obj.model, obj, "register", _actor(request), checksum=obj.checksum)
            return
        if "traffic_weight" in form.changed_data:
            weight = obj.traffic_weight
            obj.traffic_weight = form.initial.get("traffic_weight", 0)
            super().save_model(request, obj, form, change)
            try:
                services.model_set_weights(
                    model=obj.model, weights={obj.version: weight}, actor=_actor(request)
                )
            except ValidationError as exc:
                self.message_user(request, f"{obj}: {'; '.join(exc.messages)}", messages.ERROR)
            obj.refresh_from_db()
            return
        super().save_model(request, obj, form, change)
        if form.changed_data:
            ModelEvent.record(obj.model, obj, "edit", _actor(request), fields=form.changed_data)

    def _each(self, request: HttpRequest, queryset: QuerySet[ModelVersion], verb: str) -> None:
        actor = _actor(request)
        for version in queryset.select_related("model"):
            try:
                if verb == "activate":
                    services.version_activate(version=version, actor=actor)
                elif verb == "promote":
                    services.version_promote(version=version, actor=actor)
                elif verb == "retire":
                    services.version_retire(version=version, actor=actor)
                else:
                    services.version_set_shadow(
                        version=version, shadow=verb == "shadow", actor=actor
                    )
            except ValidationError as exc:
                self.message_user(request, f"{version}: {'; '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(request, f"{version}: {verb} done.", messages.SUCCESS)

    @admin.action(description="Activate selected versions")
    def activate(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, "activate")

    @admin.action(description="Promote to stable (all traffic)")
    def promote(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, "promote")

    @admin.action(description="Retire selected versions")
    def retire(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, "retire")

    @admin.action(description="Make shadow (receives copies, answers discarded)")
    def make_shadow(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, "shadow")

    @admin.action(description="Clear shadow flag")
    def clear_shadow(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, "unshadow")


@admin.register(ModelEvent)
class ModelEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "model", "version", "action", "actor")
    list_filter = ("action", "model")
    readonly_fields = ("model", "version", "action", "actor", "detail", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
