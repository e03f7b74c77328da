"""WebSocket routes of the inference app under /ws/v1/."""

from __future__ import annotations

from django.urls import path

from inference.api.consumers import InferConsumer

websocket_urlpatterns = [
    path("ws/v1/models/<slug:name>/infer", InferConsumer.as_asgi()),
]
