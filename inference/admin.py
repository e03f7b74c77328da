"""Control plane for the model registry: register a version with an upload, activate, set
canary weights (editable in the list), promote, roll back, retire. Every change goes through
:mod:`inference.registry.services` and lands in the audit log; a change that gives a version traffic
runs its pre-activation check first, and the *change without the check* action (with the
operator's reason, audited) is the way around it."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join

from inference.catalog import selectors
from inference.models import Model, ModelEvent, ModelVersion
from inference.registry import services
from inference.registry.checks import describe
from inference.transport import shadows


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
        "serving_since",
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
    readonly_fields = ("stable_version", "previous_stable", "shadow_comparison", "created_at")
    inlines = [VersionInline, EventInline]
    actions = ("rollback",)

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and "canary_policy" in form.changed_data:
            ModelEvent.record(obj, None, "canary-policy", _actor(request), policy=obj.canary_policy)

    @admin.display(description="shadow comparison")
    def shadow_comparison(self, obj: Model) -> str:
        """Each shadow against the answers the primary versions gave the same requests."""
        versions = [v for v in obj.versions.all() if v.is_shadow]
        if not versions:
            return "no shadow version"
        found = shadows.reports([v.pk for v in versions])
        rows = []
        for version in versions:
            report = found[version.pk]
            outputs = "; ".join(_output_summary(o) for o in report.outputs) or "—"
            rows.append(
                (
                    version.version,
                    report.pairs,
                    report.shadow_errors,
                    report.unanswered + report.skipped,
                    _ms(report.primary_ms),
                    _ms(report.shadow_ms),
                    outputs,
                )
            )
        header = format_html(
            "<tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            "shadow",
            "compared",
            "errors",
            "not compared",
            "primary ms",
            "shadow ms",
            "outputs (agreement, mean abs. difference, mismatches)",
        )
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            rows,
        )
        return format_html("<table>{}{}</table>", header, body)

    @admin.action(description="Roll back selected models (cut canaries / undo last promotion)")
    def rollback(self, request: HttpRequest, queryset: QuerySet[Model]) -> None:
        for model in queryset:
            try:
                target = services.model_rollback(model=model, actor=_actor(request))
            except ValidationError as exc:
                self.message_user(request, f"{model}: {'; '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(request, f"{model}: all traffic on {target.version}.")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _output_summary(output: shadows.OutputReport) -> str:
    parts = []
    if output.agreement is not None:
        parts.append(f"{output.agreement:.1%} agree of {output.labels}")
    if output.mean_abs_diff is not None:
        parts.append(f"mean |Δ| {output.mean_abs_diff:.4g} over {output.values} values")
    if output.mismatches:
        parts.append(f"{output.mismatches} mismatched")
    return f"{output.name or 'answer'}: {', '.join(parts)}"


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
        "serving_since",
        "availability",
        "health",
        "last_error",
        "created_at",
        "updated_at",
    )
    actions = ("activate", "promote", "retire", "make_shadow", "clear_shadow", "skip_check")
    fields = (
        "model",
        "version",
        "runtime",
        "artifact",
        "checksum",
        "runtime_options",
        "input_schema",
        "examples",
        "device",
        "queue",
        "max_batch_size",
        "max_delay_ms",
        "state",
        "traffic_weight",
        "serving_since",
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
                check = services.model_set_weights(
                    model=obj.model, weights={obj.version: weight}, actor=_actor(request)
                )
            except ValidationError as exc:
                self.message_user(request, f"{obj}: {'; '.join(exc.messages)}", messages.ERROR)
            else:
                if check is not None:
                    self.message_user(request, f"{obj}: weight {weight}; {describe(check)}")
            obj.refresh_from_db()
            return
        super().save_model(request, obj, form, change)
        if form.changed_data:
            ModelEvent.record(obj.model, obj, "edit", _actor(request), fields=form.changed_data)

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet[ModelVersion],
        verb: str,
        *,
        skip_check: str | None = None,
        weight: int = 0,
    ) -> None:
        actor = _actor(request)
        for version in queryset.select_related("model"):
            check = None
            try:
                if verb == "activate":
                    check = services.version_activate(
                        version=version, actor=actor, skip_check=skip_check
                    )
                elif verb == "promote":
                    check = services.version_promote(
                        version=version, actor=actor, skip_check=skip_check
                    )
                elif verb == "weight":
                    check = services.model_set_weights(
                        model=version.model,
                        weights={version.version: weight},
                        actor=actor,
                        skip_check=skip_check,
                    )
                elif verb == "retire":
                    services.version_retire(version=version, actor=actor)
                else:
                    services.version_set_shadow(
                        version=version, shadow=verb == "shadow", actor=actor
                    )
            except ValidationError as exc:
                self.message_user(request, f"{version}: {'; '.join(exc.messages)}", messages.ERROR)
            else:
                proof = f" {describe(check)}." if check is not None else ""
                self.message_user(request, f"{version}: {verb} done.{proof}", messages.SUCCESS)

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

    @admin.action(description="Change without the pre-activation check (audited)…")
    def skip_check(
        self, request: HttpRequest, queryset: QuerySet[ModelVersion]
    ) -> HttpResponse | None:
        """An intermediate page asks for the change and the operator's reason; the change is
        made without the check and audited (a ``check-skipped`` event, a log line)."""
        form = SkipCheckForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            self._each(
                request,
                queryset,
                form.cleaned_data["change"],
                skip_check=form.cleaned_data["reason"],
                weight=form.cleaned_data["weight"] or 0,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Change without the pre-activation check",
            "form": form,
            "versions": queryset.select_related("model"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/inference/skip_check.html", context)


class SkipCheckForm(forms.Form):
    change = forms.ChoiceField(
        choices=[
            ("activate", "Activate"),
            ("promote", "Promote to stable (all traffic)"),
            ("weight", "Set traffic weight"),
        ]
    )
    weight = forms.IntegerField(min_value=0, max_value=100, required=False)
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=500,
        help_text="Why the check is skipped: kept in the audit log with your name.",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("change") == "weight" and data.get("weight") is None:
            raise ValidationError({"weight": "Give the weight to set."})
        return data


@admin.register(ModelEvent)
class ModelEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "model", "version", "action", "actor")
    list_filter = ("action", "model")
    readonly_fields = ("model", "version", "action", "actor", "detail", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
