"""The result channel: a worker publishes one request's answer, the waiting view takes it.

Production: a Redis list per request (RPUSH + EXPIRE, BLPOP), keys under REDIS_KEY_PREFIX with
a time to live so an answer nobody waits for any more disappears. Embedded: a dict and a
condition in this process (the worker is a thread of it). Two functions and nothing else, so
this can become an append to the request's stream in the stream log without touching callers.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from django.conf import settings

from inference.redis_client import client, key


def reply_publish(request_id: str, payload: dict[str, Any]) -> None:
    if settings.EMBEDDED:
        _local.publish(request_id, payload)
        return
    name = key("reply", request_id)
    pipe = client().pipeline()
    pipe.rpush(name, json.dumps(payload))
    pipe.expire(name, settings.INFERENCE_REPLY_TTL_SECONDS)
    pipe.execute()


def reply_wait(request_id: str, timeout: float) -> dict[str, Any] | None:
    """The answer for ``request_id``, or None if none came within ``timeout`` seconds."""
    if timeout <= 0:
        return None
    if settings.EMBEDDED:
        return _local.wait(request_id, timeout)
    found = client(blocking=True).blpop([key("reply", request_id)], timeout=timeout)
    if found is None:
        return None
    answer: dict[str, Any] = json.loads(found[1])
    return answer


class _LocalReplies:
    """In-process replies, dropped after INFERENCE_REPLY_TTL_SECONDS if nobody took them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._box: dict[str, tuple[float, dict[str, Any]]] = {}

    def publish(self, request_id: str, payload: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._cond:
            ttl = settings.INFERENCE_REPLY_TTL_SECONDS
            for stale in [k for k, (at, _) in self._box.items() if now - at > ttl]:
                del self._box[stale]
            self._box[request_id] = (now, payload)
            self._cond.notify_all()

    def wait(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        give_up = time.monotonic() + timeout
        with self._cond:
            while request_id not in self._box:
                left = give_up - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._box.pop(request_id)[1]


_local = _LocalReplies()
