"""Which versions a worker is loading: a request whose answer is late because its model is
loading is given ``INFERENCE_LOAD_ALLOWANCE_SECONDS`` more instead of a 504 (docs/inference.md,
"A model that loads while it is asked").

A worker process marks a version while it loads it (:func:`begin`) and for a moment after
(:func:`end`: the answers of the requests that waited are on their way). Redis: a sorted set per
version, one member per loading process scored by when its mark lapses (a worker killed
mid-load leaves nothing for longer than the allowance); embedded: the same in a dict. Web
processes ask (:func:`in_progress`) only for a request that reached its deadline unanswered.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from django.conf import settings

from inference.redis_client import client, key

LINGER_SECONDS = 2.0  # a mark outlives its load this long: the answers are being sent
_me = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
_local: dict[int, dict[str, float]] = {}
_lock = threading.Lock()


def _key(version_id: int) -> str:
    return key("loading", version_id)


def _mark(version_id: int, token: str, until: float) -> None:
    if settings.EMBEDDED:
        with _lock:
            _local.setdefault(version_id, {})[token] = until
        return
    pipe = client().pipeline(transaction=False)
    pipe.zadd(_key(version_id), {token: until})
    pipe.expire(_key(version_id), int(until - time.time()) + 60)
    pipe.execute()


def begin(version_id: int) -> str:
    """This process starts loading ``version_id``; the token for :func:`end`."""
    token = f"{_me}-{threading.get_ident()}"
    _mark(version_id, token, time.time() + settings.INFERENCE_LOAD_ALLOWANCE_SECONDS + 60)
    return token


def end(version_id: int, token: str) -> None:
    """The load is over (loaded or failed): the mark lapses shortly."""
    _mark(version_id, token, time.time() + LINGER_SECONDS)


def in_progress(version_id: int) -> bool:
    """Whether some worker is loading ``version_id`` (or just was)."""
    now = time.time()
    if settings.EMBEDDED:
        with _lock:
            return any(until > now for until in _local.get(version_id, {}).values())
    return bool(client().zcount(_key(version_id), f"({now}", "+inf"))


def forget() -> None:
    """Drop the embedded marks (tests)."""
    with _lock:
        _local.clear()
