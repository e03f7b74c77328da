"""Rate limiting on django-ratelimit's counters, with RateLimit-* headers and a Redis-down policy.

django-ratelimit keeps fixed-window counters in the ``default`` cache (Redis in production, so
every web process shares them). This module adds what it lacks for an API: the numbers for the
``RateLimit-*`` headers, a 429 instead of its 403, and one decision for a dead counter store
(``RATELIMIT_FAIL_OPEN``: let requests through and log, or refuse with 503).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import get_usage
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class LimiterUnavailable(Exception):
    """The counter store cannot be reached and RATELIMIT_FAIL_OPEN is off."""


@dataclass(frozen=True)
class Usage:
    limit: int
    remaining: int
    reset: int  # seconds until the window ends
    limited: bool


def hit(request: HttpRequest, *, group: str, value: str, rate: str) -> Usage | None:
    """Count one request against ``group``/``value`` at ``rate`` (e.g. "100/m").

    Returns None when limiting is off, or the store failed and we fail open. The tightest
    result is remembered on the request for the response headers.
    """
    if not settings.RATELIMIT_ENABLE or not rate:
        return None
    try:
        usage = get_usage(request, group=group, key=lambda _g, _r: value, rate=rate, increment=True)
        failed = usage is None or usage["time_left"] == -1
    except (RedisError, OSError):
        log.exception("rate-limit store unreachable", extra={"group": group})
        failed = True
        usage = None
    if failed or usage is None:
        if settings.RATELIMIT_FAIL_OPEN:
            log.error("rate-limit store failed; failing open", extra={"group": group})
            return None
        raise LimiterUnavailable(group)
    result = Usage(
        limit=usage["limit"],
        remaining=max(0, usage["limit"] - usage["count"]),
        reset=max(1, usage["time_left"]),
        limited=usage["should_limit"],
    )
    tightest: Usage | None = getattr(request, "_sluice_ratelimit", None)
    if (
        tightest is None
        or result.limited
        or (not tightest.limited and result.remaining < tightest.remaining)
    ):
        request._sluice_ratelimit = result  # type: ignore[attr-defined]
    return result


def headers_for(usage: Usage) -> dict[str, str]:
    headers = {
        "RateLimit-Limit": str(usage.limit),
        "RateLimit-Remaining": str(usage.remaining),
        "RateLimit-Reset": str(usage.reset),
    }
    if usage.limited:
        headers["Retry-After"] = str(usage.reset)
    return headers
