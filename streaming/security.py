"""The Origin check for WebSocket handshakes."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import OriginValidator
from django.conf import settings


class BrowserOriginValidator(OriginValidator):
    """Browsers always send ``Origin``: it must be one of our hosts (``ALLOWED_HOSTS``) or a
    configured browser app (``CORS_ALLOWED_ORIGINS``), so another site cannot open a socket
    with a visitor's cookies. A handshake without ``Origin`` comes from a non-browser client,
    which has no ambient credentials to abuse and must authenticate with a key or token like
    any API client; Channels' stock validator would refuse it.
    """

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))


def origin_validated(application: Any) -> BrowserOriginValidator:
    allowed = list(settings.ALLOWED_HOSTS)
    allowed += [urlsplit(origin).netloc for origin in settings.CORS_ALLOWED_ORIGINS]
    if settings.DEBUG:
        allowed += ["localhost", "127.0.0.1", "[::1]"]
    return BrowserOriginValidator(application, allowed)


class StaffSessionMiddleware:
    """Channels' session and auth middleware only for handshakes that carry a session cookie
    (a browser with an admin session); API clients skip the session lookup and its trip to the
    database thread, and are an anonymous user until their key or token says otherwise."""

    def __init__(self, inner: Any) -> None:
        from channels.auth import AuthMiddlewareStack

        self.inner = inner
        self.with_session = AuthMiddlewareStack(inner)
        self.cookie = settings.SESSION_COOKIE_NAME.encode() + b"="

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        from django.contrib.auth.models import AnonymousUser

        cookies = b";".join(v for k, v in scope.get("headers", []) if k.lower() == b"cookie")
        if self.cookie in cookies:
            return await self.with_session(scope, receive, send)
        return await self.inner(dict(scope, user=AnonymousUser()), receive, send)
