"""The model registry: models, their versions and an audit log of every routing change.

Routing state lives on the rows: a version's ``state`` and ``traffic_weight`` decide where
requests go, and ``Model.stable_version`` is where they go when a canary fails. Every change
that touches several versions at once is a method of :class:`Model` that locks the model row,
so two operators acting at once cannot leave a half-applied mix.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models, transaction
from django.utils import timezone

from inference.rules.canary_policy import PolicyError, policy_parse
from inference.rules.input_schema import SchemaError, validate_schema
from inference.runtimes.remote import refused_option


class Model(models.Model):
    """A named model a tenant can call (``/v1/models/{name}``); serves through its versions."""

    class Task(models.TextChoices):
        CLASSIFICATION = "classification"
        REGRESSION = "regression"
        EMBEDDING = "embedding"
        TEXT = "text"
        OTHER = "other"

    name = models.SlugField(max_length=64, unique=True)
    task = models.CharField(max_length=32, choices=Task.choices, default=Task.OTHER)
    description = models.TextField(blank=True)
    sticky_routing = models.BooleanField(
        default=False, help_text="Send each tenant to the same canary version (by hashing)."
    )
    stable_version = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    previous_stable = models.ForeignKey(
        "ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="What a rollback returns to after a promotion.",
    )
    canary_policy = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "Automatic canary rollback: {window_seconds, min_requests, max_error_rate_increase, "
            "max_p99_ratio}; empty: off."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def _locked(self) -> Model:
        return Model.objects.select_for_update().get(pk=self.pk)

    def clean(self) -> None:
        try:
            policy = policy_parse(self.canary_policy)
        except PolicyError as exc:
            raise ValidationError({"canary_policy": str(exc)}) from exc
        self.canary_policy = {} if policy is None else policy.as_dict()

    def promote(
        self, version: ModelVersion, *, actor: str, check: dict[str, Any] | None = None
    ) -> None:
        """Make ``version`` the stable one with all the traffic; others stay active at 0.
        ``check``: how the version was proven (:mod:`inference.registry.checks`), for the audit
        log."""
        with transaction.atomic():
            # Locks the model: two concurrent promotions must not both leave a version at 100.
            model = self._locked()
            target = model.versions.select_for_update().get(pk=version.pk)
            if target.state == ModelVersion.State.RETIRED:
                raise ValidationError("A retired version cannot be promoted; activate it first.")
            if target.is_shadow:
                raise ValidationError("A shadow version cannot be promoted; clear the flag first.")
            model.versions.filter(state=ModelVersion.State.ACTIVE).exclude(pk=target.pk).update(
                traffic_weight=0
            )
            target.state = ModelVersion.State.ACTIVE
            if not target.traffic_weight:
                target.serving_since = timezone.now()
            target.traffic_weight = 100
            target.save(update_fields=["state", "traffic_weight", "serving_since", "updated_at"])
            if model.stable_version_id != target.pk:
                model.previous_stable_id = model.stable_version_id
                model.stable_version = target
                model.save(update_fields=["stable_version", "previous_stable"])
            ModelEvent.record(model, target, "promote", actor, **_checked(check))
        self.refresh_from_db()

    def rollback(self, *, actor: str) -> ModelVersion:
        """Send every request back to a known-good version and return it.

        With canaries taking traffic, they are cut to 0 and the stable version gets it all.
        Without, the last promotion is undone (the previous stable version returns).
        """
        with transaction.atomic():
            # Locks the model: a rollback racing a promotion must see one or the other.
            model = self._locked()
            stable = model.stable_version
            if stable is None:
                raise ValidationError(f"{model.name} has no stable version to roll back to.")
            canaries = model.versions.filter(
                state=ModelVersion.State.ACTIVE, traffic_weight__gt=0, is_shadow=False
            ).exclude(pk=stable.pk)
            if canaries.exists():
                cut = list(canaries.values_list("version", flat=True))
                canaries.update(traffic_weight=0)
                _give_weight(stable.pk, 100)
                ModelEvent.record(model, stable, "rollback", actor, canaries_cut=cut)
                target = stable
            else:
                previous = model.previous_stable
                if previous is None:
                    raise ValidationError(f"{model.name} has no canary and no earlier version.")
                model.versions.filter(state=ModelVersion.State.ACTIVE).exclude(
                    pk=previous.pk
                ).update(traffic_weight=0)
                _give_weight(previous.pk, 100)
                model.stable_version, model.previous_stable = previous, stable
                model.save(update_fields=["stable_version", "previous_stable"])
                ModelEvent.record(model, previous, "rollback", actor, undone=stable.version)
                target = previous
        self.refresh_from_db()
        target.refresh_from_db()
        return target

    def set_weights(
        self, weights: dict[str, int], *, actor: str, check: dict[str, Any] | None = None
    ) -> None:
        """Canary weights by version label; versions not named keep theirs. Weights are
        relative (90 and 10 send 90% and 10%); at least one serving version must stay above 0.
        ``check``: how the versions given traffic were proven, for the audit log."""
        with transaction.atomic():
            # Locks the model: concurrent weight edits would each validate a sum the other breaks.
            model = self._locked()
            versions = {v.version: v for v in model.versions.select_for_update()}
            unknown = sorted(set(weights) - set(versions))
            if unknown:
                raise ValidationError(f"{model.name} has no version(s) {unknown}.")
            for label, weight in weights.items():
                if not 0 <= weight <= 100:
                    raise ValidationError(f"Weight of {label} must be 0..100, not {weight}.")
                if weight and versions[label].state != ModelVersion.State.ACTIVE:
                    raise ValidationError(f"Version {label} is not active; activate it first.")
                if weight and not versions[label].traffic_weight:
                    versions[label].serving_since = timezone.now()
                versions[label].traffic_weight = weight
            serving = [
                v
                for v in versions.values()
                if v.state == ModelVersion.State.ACTIVE and not v.is_shadow and v.traffic_weight
            ]
            if not serving:
                raise ValidationError("At least one active version must keep a weight above 0.")
            for label in weights:
                versions[label].save(
                    update_fields=["traffic_weight", "serving_since", "updated_at"]
                )
            ModelEvent.record(
                model, None, "weights", actor, weights=dict(weights), **_checked(check)
            )

    def canary_cut(
        self, version_id: int, *, judged_since: datetime | None, figures: dict[str, Any]
    ) -> bool:
        """The canary policy's rollback (:mod:`inference.catalog.canary`): the canary's weight
        goes to 0 and the stable version takes its share. ``judged_since``: the canary's
        ``serving_since`` when it was judged. False when there was nothing to cut: another
        process cut it first, or an operator changed its traffic since."""
        with transaction.atomic():
            # Locks the model: every web process (and celery beat) judges the same windows, so
            # two may find the canary failing at once; the second then sees weight 0 and does
            # nothing (one cut, one event, one log line). And an operator who gave the canary
            # traffic again after it was judged restarted its serving_since: that judgement is
            # about an earlier run of it and cuts nothing.
            model = self._locked()
            canary = model.versions.select_for_update().filter(pk=version_id).first()
            if (
                canary is None
                or canary.state != ModelVersion.State.ACTIVE
                or canary.is_shadow
                or not canary.traffic_weight
                or canary.serving_since != judged_since
                or model.stable_version_id is None
                or model.stable_version_id == canary.pk
            ):
                return False
            stable = model.versions.select_for_update().get(pk=model.stable_version_id)
            cut = canary.traffic_weight
            ModelVersion.objects.filter(pk=canary.pk).update(traffic_weight=0)
            _give_weight(stable.pk, min(100, stable.traffic_weight + cut))
            ModelEvent.record(
                model,
                canary,
                "canary-rollback",
                "canary-policy",
                weight_cut=cut,
                stable=stable.version,
                **figures,
            )
        return True


def _checked(check: dict[str, Any] | None) -> dict[str, Any]:
    """The audit-log detail of a change that gave a version traffic: how it was proven."""
    return {} if check is None else {"check": check}


def _give_weight(version_id: int, weight: int) -> None:
    """Give an active version ``weight``; its ``serving_since`` restarts when it had none."""
    ModelVersion.objects.filter(pk=version_id, traffic_weight=0).update(
        serving_since=timezone.now()
    )
    ModelVersion.objects.filter(pk=version_id).update(
        state=ModelVersion.State.ACTIVE, traffic_weight=weight
    )


def artifact_path(instance: ModelVersion, filename: str) -> str:
    return f"models/{instance.model.name}/{instance.version}/{filename}"


class ModelVersion(models.Model):
    """One deployable build of a model: artifact, runtime, device, batching and routing state."""

    class Runtime(models.TextChoices):
        ONNX = "onnx", "ONNX Runtime"
        PYTHON = "python", "Python handler"
        KSERVE = "kserve", "Remote KServe v2 / Triton"
        OPENAI = "openai", "Remote OpenAI-compatible"
        TRANSFORMERS = "transformers", "Hugging Face transformers"

    class Device(models.TextChoices):
        CPU = "cpu"
        CUDA = "cuda"

    class State(models.TextChoices):
        DRAFT = "draft"
        ACTIVE = "active"
        RETIRED = "retired"

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(
        max_length=32, validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    )
    runtime = models.CharField(max_length=16, choices=Runtime.choices)
    artifact = models.FileField(upload_to=artifact_path, max_length=300, blank=True)
    checksum = models.CharField(max_length=64, blank=True, editable=False, help_text="SHA-256.")
    runtime_options = models.JSONField(default=dict, blank=True)
    input_schema = models.JSONField(
        default=dict, blank=True, help_text="JSON Schema subset the API validates input against."
    )
    device = models.CharField(max_length=8, choices=Device.choices, default=Device.CPU)
    max_batch_size = models.PositiveIntegerField(
        default=8, validators=[MinValueValidator(1), MaxValueValidator(4096)]
    )
    max_delay_ms = models.PositiveIntegerField(default=5, validators=[MaxValueValidator(10_000)])
    queue = models.CharField(
        max_length=64, default="cpu", validators=[RegexValidator(r"^[A-Za-z0-9_.-]+$")]
    )
    state = models.CharField(max_length=8, choices=State.choices, default=State.DRAFT)
    traffic_weight = models.PositiveSmallIntegerField(
        default=0, validators=[MaxValueValidator(100)]
    )
    is_shadow = models.BooleanField(
        default=False,
        help_text="Receives a copy of every request; its answers are compared, not returned.",
    )
    examples = models.JSONField(
        default=list,
        blank=True,
        help_text=(
            "Example inputs the pre-activation check runs (a list of input objects); empty: "
            "the stable version's, else one built from the input schema."
        ),
    )
    serving_since = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When it last went from no traffic to some.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("model__name", "-created_at")
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="unique_model_version")
        ]

    def __str__(self) -> str:
        return f"{self.model.name}:{self.version}"

    def clean(self) -> None:
        try:
            validate_schema(self.input_schema or {})
        except SchemaError as exc:
            raise ValidationError({"input_schema": str(exc)}) from exc
        if self.queue not in settings.INFERENCE_QUEUES:
            raise ValidationError(
                {"queue": f"Not one of the inference queues {settings.INFERENCE_QUEUES}."}
            )
        if self.runtime == self.Runtime.ONNX and not self.artifact:
            raise ValidationError({"artifact": "An ONNX version needs its .onnx artifact."})
        if self.runtime == self.Runtime.PYTHON and not (self.runtime_options or {}).get("handler"):
            raise ValidationError({"runtime_options": 'A Python version needs {"handler": ...}.'})
        if not isinstance(self.examples, list) or not all(
            isinstance(item, dict) for item in self.examples
        ):
            raise ValidationError({"examples": "A list of input objects."})
        if self.runtime in (self.Runtime.KSERVE, self.Runtime.OPENAI):
            refused = refused_option(self.runtime_options or {})
            if refused:  # a key stored here would be shown in the admin: never save it
                raise ValidationError({"runtime_options": refused})

    # The state machine: every state change goes through activate() or retire().
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        State.DRAFT: frozenset({State.ACTIVE, State.RETIRED}),
        State.ACTIVE: frozenset({State.RETIRED}),
        State.RETIRED: frozenset({State.ACTIVE}),
    }

    def _check_move(self, to: str) -> None:
        if to not in self.TRANSITIONS[self.state]:
            raise ValidationError(f"{self} cannot go from {self.state} to {to}.")

    def activate(self, *, actor: str, check: dict[str, Any] | None = None) -> None:
        """draft/retired → active. The first active version becomes stable with all traffic.
        ``check``: how the version was proven (:mod:`inference.registry.checks`), for the audit
        log."""
        with transaction.atomic():
            # Locks the model: two first activations must not both become the stable version.
            model = Model.objects.select_for_update().get(pk=self.model_id)
            row = ModelVersion.objects.select_for_update().get(pk=self.pk)
            changed = row.state != self.State.ACTIVE
            if changed:
                row._check_move(self.State.ACTIVE)
                row.state = self.State.ACTIVE
                row.save(update_fields=["state", "updated_at"])
            if model.stable_version_id is None and not row.is_shadow:
                _give_weight(row.pk, 100)
                model.stable_version = row
                model.save(update_fields=["stable_version"])
                changed = True
            if changed:  # activating an active version is a no-op, not an event
                ModelEvent.record(model, row, "activate", actor, **_checked(check))
        self.refresh_from_db()

    def retire(self, *, actor: str) -> None:
        """active/draft → retired: no traffic. The stable version cannot be retired."""
        with transaction.atomic():
            # Locks the model: retiring while another operator promotes this version.
            model = Model.objects.select_for_update().get(pk=self.model_id)
            if model.stable_version_id == self.pk:
                raise ValidationError("The stable version cannot be retired; promote another.")
            ModelVersion.objects.select_for_update().get(pk=self.pk)._check_move(self.State.RETIRED)
            ModelVersion.objects.filter(pk=self.pk).update(
                state=self.State.RETIRED, traffic_weight=0, is_shadow=False
            )
            if model.previous_stable_id == self.pk:
                model.previous_stable = None
                model.save(update_fields=["previous_stable"])
            ModelEvent.record(model, self, "retire", actor)
        self.refresh_from_db()

    def set_shadow(self, shadow: bool, *, actor: str) -> None:
        with transaction.atomic():
            # Locks the model: the stable version must never become a shadow under our feet.
            model = Model.objects.select_for_update().get(pk=self.model_id)
            if shadow and model.stable_version_id == self.pk:
                raise ValidationError("The stable version cannot be a shadow.")
            ModelVersion.objects.filter(pk=self.pk).update(
                is_shadow=shadow, traffic_weight=0 if shadow else self.traffic_weight
            )
            ModelEvent.record(model, self, "shadow", actor, shadow=shadow)
        self.refresh_from_db()


class ModelEvent(models.Model):
    """Audit log: who changed what about a model's versions and routing, and when."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="events")
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=32)
    actor = models.CharField(max_length=150)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.model.name} {self.action} by {self.actor}"

    @classmethod
    def record(
        cls, model: Model, version: ModelVersion | None, action: str, actor: str, **detail: Any
    ) -> ModelEvent:
        return cls.objects.create(
            model=model, version=version, action=action, actor=actor or "system", detail=detail
        )
