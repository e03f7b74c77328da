from __future__ import annotations

from django.urls import path

from streaming import views

urlpatterns = [
    path("streams/<str:stream_id>", views.StreamView.as_view(), name="stream"),
    path("streams/<str:stream_id>/events", views.stream_events, name="stream-events"),
]
