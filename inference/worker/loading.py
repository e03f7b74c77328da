"""Which versions a worker is loading: a request whose answer is late because its model is
loading is given ``INFERENCE_LOAD_ALLOWANCE_SECONDS`` more instead of a 504 (docs/inference.md,
"A model that loads while it is asked").

A worker process claims a version while it loads it (:func:`begin`) and for a moment after
(:func:`end`: the answers of the requests that waited are on their way; a request that came
after the load ended is not held by that moment), with the short-lived
claims of ``plumbing.presence``: a Redis sorted set per version, one member per loading
process and thread, scored by when its claim lapses (a worker killed mid-load leaves nothing
behind for longer than the allowance); embedded, the same in this process. Web processes ask
(:func:`in_progress`) only for a request that reached its deadline unanswered.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from django.conf import settings

from plumbing import presence

LINGER_SECONDS = 1.0  # a claim outlives its load this long: the answers are being sent
_ENDED = "@ended@"  # a claim past its load: the token, this, then when it ended
_me = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _name(version_id: int) -> str:
    return f"loading:{version_id}"


def begin(version_id: int) -> str:
    """This process starts loading ``version_id``; the token for :func:`end`."""
    token = f"{_me}-{threading.get_ident()}"
    presence.claim([_name(version_id)], token, settings.INFERENCE_LOAD_ALLOWANCE_SECONDS + 60)
    return token


def end(version_id: int, token: str) -> None:
    """The load is over (loaded or failed): for a moment its claim says when it ended."""
    names = [_name(version_id)]
    presence.claim(names, f"{token}{_ENDED}{time.time():.6f}", LINGER_SECONDS)
    presence.unclaim(names, token)  # after: never a moment with neither claim


def in_progress(version_id: int, *, since: float | None = None) -> bool:
    """Whether some worker is loading ``version_id``, or ended a load of it within the last
    ``LINGER_SECONDS`` (the answers of the requests that waited are on their way) — with
    ``since`` (wall clock), only a load that ended after then: a request that came after the
    load was not held up by it."""
    for member in presence.claimants([_name(version_id)])[_name(version_id)]:
        _, ended, at = member.rpartition(_ENDED)
        if not ended or since is None or float(at) >= since:
            return True
    return False
