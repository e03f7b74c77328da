"""Which versions a worker is loading: a request whose answer is late because its model is
loading is given ``INFERENCE_LOAD_ALLOWANCE_SECONDS`` more instead of a 504 (docs/inference.md,
"A model that loads while it is asked").

A worker process claims a version while it loads it (:func:`begin`) and for a moment after
(:func:`end`: the answers of the requests that waited are on their way), with the short-lived
claims of ``plumbing.presence``: a Redis sorted set per version, one member per loading
process and thread, scored by when its claim lapses (a worker killed mid-load leaves nothing
behind for longer than the allowance); embedded, the same in this process. Web processes ask
(:func:`in_progress`) only for a request that reached its deadline unanswered.
"""

from __future__ import annotations

import os
import threading
import uuid

from django.conf import settings

from plumbing import presence

LINGER_SECONDS = 1.0  # a claim outlives its load this long: the answers are being sent
_me = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _name(version_id: int) -> str:
    return f"loading:{version_id}"


def begin(version_id: int) -> str:
    """This process starts loading ``version_id``; the token for :func:`end`."""
    token = f"{_me}-{threading.get_ident()}"
    presence.claim([_name(version_id)], token, settings.INFERENCE_LOAD_ALLOWANCE_SECONDS + 60)
    return token


def end(version_id: int, token: str) -> None:
    """The load is over (loaded or failed): the claim lapses shortly."""
    presence.claim([_name(version_id)], token, LINGER_SECONDS)


def in_progress(version_id: int) -> bool:
    """Whether some worker is loading ``version_id`` (or just was)."""
    return bool(presence.claimants([_name(version_id)])[_name(version_id)])
