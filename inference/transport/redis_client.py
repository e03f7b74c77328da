"""The Redis connections inference uses directly (replies, admission), one pool per process."""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings


@functools.cache
def client(*, blocking: bool = False) -> Any:
    """A client on ``REDIS_URL``. ``blocking`` ones (for BLPOP, which carries its own
    timeout) read for as long as the longest deadline, so a dead Redis still ends the wait;
    the others fail fast like the rest of the project."""
    import redis

    timeout = settings.REDIS_SOCKET_TIMEOUT
    longest = settings.INFERENCE_MAX_TIMEOUT_MS / 1000 + 5
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=timeout,
        socket_timeout=longest if blocking else timeout,
    )


def key(*parts: object) -> str:
    return ":".join([settings.REDIS_KEY_PREFIX, "inference", *map(str, parts)])
