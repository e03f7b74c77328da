"""WebSocket routes under /ws/v1/ (consumers arrive with the streaming issue)."""

from __future__ import annotations

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
