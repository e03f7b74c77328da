from __future__ import annotations

from django.urls import path

from jobs import views

urlpatterns = [
    path("jobs", views.JobListView.as_view(), name="job-list"),
    path("jobs/<uuid:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<uuid:job_id>/results", views.JobResultsView.as_view(), name="job-results"),
    path("jobs/<uuid:job_id>/events", views.job_events, name="job-events"),
    path("dead-tasks", views.DeadTaskListView.as_view(), name="dead-task-list"),
    path("dead-tasks/replay", views.DeadTaskReplayView.as_view(), name="dead-task-replay"),
]
