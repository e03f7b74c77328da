"""WebSocket routes of media streams under /ws/v1/media/."""

from __future__ import annotations

from django.urls import path

from inference.media.consumers import TranscriptionConsumer

websocket_urlpatterns = [
    path("ws/v1/media/transcriptions", TranscriptionConsumer.as_asgi()),
]
