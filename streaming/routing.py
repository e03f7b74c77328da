"""WebSocket routes under /ws/v1/."""

from __future__ import annotations

from django.urls import path

from streaming.consumers import StreamConsumer

websocket_urlpatterns = [
    path("ws/v1/streams/<str:stream_id>", StreamConsumer.as_asgi()),
]
