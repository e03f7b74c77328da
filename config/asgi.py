"""ASGI entry point: HTTP through Django, WebSocket through Channels (browser Origins checked)."""

from __future__ import annotations

import os

from streaming.handler import asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = asgi_application()  # Django's handler, closing what a client leaves behind

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from inference.api.ws_urls import websocket_urlpatterns as inference_ws  # noqa: E402
from inference.media.ws_urls import websocket_urlpatterns as media_routes  # noqa: E402
from plumbing.bodylimit import LimitASGI  # noqa: E402
from streaming.routing import websocket_urlpatterns  # noqa: E402
from streaming.security import StaffSessionMiddleware, origin_validated  # noqa: E402

application = ProtocolTypeRouter(
    {
        # daphne (manage.py serve) holds the body limit itself (streaming/server.py); this
        # holds it under any other ASGI server.
        "http": LimitASGI(django_asgi_app),
        # The session lets staff (the admin's dashboard) follow platform streams; API clients
        # authenticate with a key or token as before. The Origin check guards the cookie.
        "websocket": origin_validated(
            StaffSessionMiddleware(URLRouter(websocket_urlpatterns + inference_ws + media_routes))
        ),
    }
)
