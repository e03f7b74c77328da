"""Control plane for batch jobs: jobs with progress bars (filter by tenant, status, model),
their tasks inline, cancel; the dead-letter queue with a replay action. Every change goes
through :mod:`jobs.services`."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.contrib import admin, messages
from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from rest_framework.exceptions import APIException

from jobs import services
from jobs.models import ACTIVE_JOB, DeadTask, Job, Task, TaskStatus

INLINE_TASKS = 50


def progress_bar(job: Job) -> str:
    """A bar of succeeded (green), failed (red) and cancelled (grey) parts of the total."""
    total = job.total or 1
    parts = [
        ("ok", job.succeeded),
        ("dead", job.failed),
        ("cancelled", job.cancelled),
    ]
    segments = format_html_join(
        "",
        '<span class="jobs-bar-{}" style="width:{}%"></span>',
        ((name, f"{100 * n / total:.2f}") for name, n in parts if n),
    )
    return format_html(
        '<span class="jobs-bar" title="{} of {} done">{}</span> {}%',
        job.done,
        job.total,
        segments,
        f"{100 * job.progress:.1f}",
    )


class FirstTasksFormSet(BaseInlineFormSet):
    """Only the first tasks, problems first: a job may have a million."""

    def get_queryset(self) -> QuerySet[Task]:
        queryset = super().get_queryset()
        order = Case(
            When(status=TaskStatus.DEAD, then=Value(0)),
            When(status=TaskStatus.RUNNING, then=Value(1)),
            When(status=TaskStatus.QUEUED, then=Value(2)),
            default=Value(3),
            output_field=IntegerField(),
        )
        return queryset.annotate(problem_first=order).order_by("problem_first", "index")[
            :INLINE_TASKS
        ]


class TaskInline(admin.TabularInline):
    model = Task
    formset = FirstTasksFormSet
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("index", "status", "attempts", "last_error", "result", "result_ref", "finished_at")
    readonly_fields = fields
    verbose_name_plural = f"tasks (the first {INLINE_TASKS}: dead, running and queued first)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "short_id",
        "tenant",
        "model",
        "version",
        "status",
        "progress",
        "total",
        "succeeded",
        "failed",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "tenant", "model")
    search_fields = ("id", "source")
    list_select_related = ("tenant", "model", "version")
    date_hierarchy = "created_at"
    readonly_fields = (
        "id",
        "tenant",
        "model",
        "version",
        "status",
        "progress",
        "source",
        "total",
        "succeeded",
        "failed",
        "cancelled",
        "chunk_size",
        "chunks",
        "next_chunk",
        "max_attempts",
        "priority",
        "options",
        "model_seconds",
        "created_at",
        "started_at",
        "progressed_at",
        "finished_at",
        "all_tasks",
    )
    fields = readonly_fields
    inlines = [TaskInline]
    actions = ("cancel", "replay_dead")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are submitted through the API or `manage.py submitjob`

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        running = Job.objects.filter(status__in=ACTIVE_JOB).exists()
        return super().changelist_view(request, {**(extra_context or {}), "jobs_running": running})

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: Job) -> str:
        return obj.short_id

    @admin.display(description="progress")
    def progress(self, obj: Job) -> str:
        return progress_bar(obj)

    @admin.display(description="tasks")
    def all_tasks(self, obj: Job) -> str:
        url = reverse("admin:jobs_task_changelist") + f"?job={obj.pk}"
        dead = reverse("admin:jobs_deadtask_changelist") + f"?job={obj.pk}"
        return format_html(
            '<a href="{}">all {} tasks</a> · <a href="{}">{} dead</a>',
            url,
            obj.total,
            dead,
            obj.failed,
        )

    @admin.action(description="Cancel selected jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset:
            try:
                services.job_cancel(job=job)
            except APIException as exc:
                self.message_user(request, f"{job}: {exc.detail}", messages.WARNING)
            else:
                self.message_user(request, f"{job}: cancelled.")

    @admin.action(description="Replay the dead tasks of selected jobs")
    def replay_dead(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset:
            try:
                count = services.dead_replay(job=job)
            except APIException as exc:
                self.message_user(request, f"{job}: {exc.detail}", messages.WARNING)
            else:
                self.message_user(request, f"{job}: {count} dead tasks replayed.")


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display: tuple[str, ...] = (
        "index",
        "job",
        "status",
        "attempts",
        "last_error",
        "finished_at",
    )
    list_filter = ("status",)
    list_select_related = ("job",)
    search_fields = ("job__id",)
    show_full_result_count = False  # counting a million rows on every page is not worth it

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Task._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(DeadTask)
class DeadTaskAdmin(TaskAdmin):
    """The dead-letter queue: every task that exhausted its attempts, with its reason."""

    list_display = ("index", "job", "attempts", "last_error", "finished_at")
    list_filter = ("job__tenant",)
    actions = ("replay",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        return super().get_queryset(request).filter(status=TaskStatus.DEAD)

    @admin.action(description="Replay selected dead tasks")
    def replay(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        by_job: dict[Any, list[int]] = defaultdict(list)
        for task_id, job_id in queryset.values_list("id", "job_id"):
            by_job[job_id].append(task_id)
        for job in Job.objects.filter(pk__in=list(by_job)):
            try:
                count = services.dead_replay(job=job, task_ids=by_job[job.pk])
            except APIException as exc:
                self.message_user(request, f"{job}: {exc.detail}", messages.WARNING)
            else:
                self.message_user(request, f"{job}: {count} tasks replayed.")
