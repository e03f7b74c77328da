"""``/v1/media/…`` (included under ``v1/`` by config/urls.py)."""

from __future__ import annotations

from django.urls import path

from inference.media import views

urlpatterns = [
    path("media/transcriptions", views.transcriptions, name="media-transcriptions"),
    path("media/speech", views.speech, name="media-speech"),
    path("media/translations", views.translations, name="media-translations"),
    path("media/video", views.video, name="media-video"),
    path("media/video/<str:stream_id>/preview", views.video_preview, name="media-video-preview"),
]
