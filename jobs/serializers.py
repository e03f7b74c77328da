from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.models import ACTIVE_JOB, FINISHED_TASK, Job, JobStatus, Task, TaskStatus
from jobs.selectors import Cursor, task_result
from plumbing import presence
from plumbing.untrusted import INT64_MAX


class JobOptionsSerializer(serializers.Serializer):
    chunk_size = serializers.IntegerField(min_value=1, max_value=10_000, required=False)
    max_attempts = serializers.IntegerField(min_value=1, max_value=100, required=False)


@extend_schema_field({"type": "array", "items": {"type": "object"}, "minItems": 1})
class InputsField(serializers.JSONField):
    """Any JSON here (``jobs.inputs.from_list`` checks it is a list of objects, naming the
    item that is not), documented as what it must be."""


class JobCreateSerializer(serializers.Serializer):
    """``inputs`` (a JSON list of objects), ``file`` (JSONL or CSV upload) or ``input_uri``
    (``storage://…`` / ``s3://…``): exactly one."""

    model = serializers.SlugField(max_length=64)
    version = serializers.CharField(max_length=32, required=False)
    inputs = InputsField(required=False)
    file = serializers.FileField(required=False)
    input_uri = serializers.CharField(max_length=1000, required=False)
    priority = serializers.IntegerField(min_value=0, max_value=9, default=0)
    options = JobOptionsSerializer(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [k for k in ("inputs", "file", "input_uri") if attrs.get(k) is not None]
        if len(given) != 1:
            raise serializers.ValidationError(
                "Give exactly one of inputs, file or input_uri.", code="required"
            )
        options = dict(attrs.get("options") or {})
        attrs["chunk_size"] = options.get("chunk_size", settings.JOBS_CHUNK_SIZE)
        attrs["max_attempts"] = options.get("max_attempts", settings.JOBS_MAX_ATTEMPTS)
        return attrs


class JobSerializer(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    model = serializers.CharField(source="model.name")
    version = serializers.CharField(source="version.version")
    done = serializers.IntegerField()
    progress = serializers.FloatField()
    urls = serializers.SerializerMethodField()
    notice = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = (
            "id",
            "object",
            "model",
            "version",
            "status",
            "priority",
            "source",
            "total",
            "done",
            "succeeded",
            "failed",
            "cancelled",
            "progress",
            "chunk_size",
            "max_attempts",
            "created_at",
            "started_at",
            "finished_at",
            "urls",
            "notice",
        )

    def get_object(self, obj: Job) -> str:
        return "job"

    def get_notice(self, obj: Job) -> str | None:
        """Why an unfinished job does not move: no worker consumes the jobs queue. Not a
        refusal: the job waits queued and runs when a worker starts (docs/jobs.md)."""
        if obj.status not in ACTIVE_JOB or presence.served(settings.JOBS_QUEUE):
            return None
        return (
            f"No worker is serving queue {settings.JOBS_QUEUE}: the job waits queued and runs "
            "when a worker starts."
        )

    def get_urls(self, obj: Job) -> dict[str, str]:
        base = f"/v1/jobs/{obj.pk}"
        return {
            "self": base,
            "results": f"{base}/results",
            "events": f"{base}/events",
            "cancel": f"{base}/cancel",
        }


class TaskResultSerializer(serializers.ModelSerializer):
    task = serializers.IntegerField(source="id")
    result = serializers.SerializerMethodField()
    error = serializers.CharField(source="last_error")

    class Meta:
        model = Task
        fields = ("task", "index", "status", "attempts", "result", "error", "finished_at")

    def get_result(self, obj: Task) -> Any:
        return task_result(obj.result, obj.result_ref)


class ResultsQuerySerializer(serializers.Serializer):
    """The query of ``GET /v1/jobs/{id}/results`` that is checked: ``follow`` and what only a
    follower may ask (``after``; ``status`` must then be a finished one)."""

    follow = serializers.BooleanField(default=False)
    after = serializers.CharField(required=False)
    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False, allow_blank=True)

    def validate_after(self, value: str) -> Cursor:
        try:
            return Cursor.parse(value)
        except ValueError:
            raise serializers.ValidationError(
                "Expected a line's cursor, <seq>-<task>.", code="invalid"
            ) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs["follow"]:
            if "after" in attrs:
                raise serializers.ValidationError({"after": ["Only with follow=true."]})
            return attrs
        status = attrs.get("status") or None
        if status is not None and status not in FINISHED_TASK:
            raise serializers.ValidationError(
                {
                    "status": [
                        f"A follower sees finished tasks only: one of {', '.join(FINISHED_TASK)}."
                    ]
                }
            )
        return attrs


class JobListQuerySerializer(serializers.Serializer):
    """The query of ``GET /v1/jobs``: ``status`` filters (blank: every job)."""

    status = serializers.ChoiceField(choices=JobStatus.choices, required=False, allow_blank=True)


class DeadTaskQuerySerializer(serializers.Serializer):
    """The query of ``GET /v1/dead-tasks``: ``job`` filters."""

    job = serializers.UUIDField(required=False)


class DeadTaskSerializer(serializers.ModelSerializer):
    task = serializers.IntegerField(source="id")
    job = serializers.UUIDField(source="job_id")
    error = serializers.CharField(source="last_error")

    class Meta:
        model = Task
        fields = ("task", "job", "index", "attempts", "error", "input", "finished_at")


class ReplaySerializer(serializers.Serializer):
    job = serializers.UUIDField()
    tasks = serializers.ListField(
        # A task id is a bigint: a larger number (a form field, unlike JSON, is not bounded
        # by the parser) must be a 422, not an overflow in the query.
        child=serializers.IntegerField(min_value=1, max_value=INT64_MAX),
        required=False,
        max_length=10_000,
    )
