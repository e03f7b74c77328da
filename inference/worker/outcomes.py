"""What a request's failure means, for its client, the version's breaker and its health stats.

Worker side: a failed request's reply (:func:`failure_reply`: the client's status and words,
the operator's text apart, and the outcome of :mod:`inference.catalog.version_health`), the
engine's own check before an input joins a batch (:func:`checked`) and each request's reply from its
batcher result (:func:`answer`). For the breaker: the circuits a worker outage opened close
when a worker serves their queue again (:func:`outage_over`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import connection

from inference.catalog import selectors
from inference.rules import outcome_kinds
from inference.rules.breaker import CircuitBreaker
from inference.runtimes import RuntimeUnavailable
from inference.runtimes.base import InvalidInput, UpstreamError, blames_input
from inference.worker.batcher import DeadlineExceeded
from inference.worker.cache import Loaded

log = logging.getLogger(__name__)


def failure_reply(
    version_id: int, exc: BaseException, *, request_ids: Iterable[str] = ()
) -> dict[str, Any]:
    """The worker's reply for a request that failed (one mapping for single and batched work).

    ``outcome`` says what the failure means for the version
    (:mod:`inference.catalog.version_health`); ``error`` is what the client may read;
    ``internal``, the engine's or upstream's own text, is for the operator only (logged here with
    the request ids, recorded as the version's last error by the web tier, never answered):

    - the engine cannot tell before running it that the input is wrong (``InvalidInput``):
      422 with ``errors`` per input field;
    - an engine that cannot serve (with an upstream's Retry-After): 503, the version's failure;
    - a remote upstream that failed: its status for the client (502, or 504 on its timeout),
      without its text; a 4xx other than 404 and 429 is the input's fault;
    - anything else the engine raised on this request's input: 500 ``inference-error``.
    """
    if isinstance(exc, InvalidInput):
        return {"ok": False, "status": 422, "errors": exc.errors}
    internal = f"{type(exc).__name__}: {exc}"[:500]
    rids = ", ".join(request_ids) or "-"
    if isinstance(exc, RuntimeUnavailable):
        log.warning("version %s cannot serve (requests %s): %s", version_id, rids, exc)
        reply: dict[str, Any] = {
            "ok": False,
            "status": 503,
            "error": str(exc),
            "outcome": outcome_kinds.ENGINE_ERROR,
            "internal": internal,
        }
        if getattr(exc, "retry_after", None):
            reply["retry_after"] = exc.retry_after  # type: ignore[attr-defined]
        return reply
    if isinstance(exc, UpstreamError):
        log.warning("version %s: upstream failed (requests %s): %s", version_id, rids, exc)
        said = f" with HTTP {exc.upstream_status}" if exc.upstream_status else ""
        if exc.status == 504:
            outcome, public = outcome_kinds.TIMEOUT, "The model's upstream did not answer in time."
        else:
            outcome = outcome_kinds.INPUT_ERROR if blames_input(exc) else outcome_kinds.ENGINE_ERROR
            public = f"The model's upstream failed{said}."
        return {
            "ok": False,
            "status": exc.status,
            "error": public,
            "outcome": outcome,
            "internal": internal,
        }
    log.error(
        "inference failed for version %s (requests %s): %r", version_id, rids, exc, exc_info=exc
    )
    return {
        "ok": False,
        "status": 500,
        "error": "The model failed on this input.",
        "outcome": outcome_kinds.INPUT_ERROR,
        "internal": internal,
    }


def checked(
    loaded: Loaded, items: list[tuple[str, dict[str, Any], float]], replies: dict[str, Any]
) -> list[tuple[str, dict[str, Any], float]]:
    """The items the engine may run: those its runtime's own check refuses (``InvalidInput``)
    are answered 422 in ``replies`` and never join a batch."""
    if not loaded.checks:
        return items
    runnable = []
    for rid, payload, deadline in items:
        try:
            runnable.append((rid, loaded.runtime.check(payload), deadline))
        except InvalidInput as exc:
            replies[rid] = failure_reply(loaded.spec.id, exc)
    return runnable


def answer(
    version_id: int,
    live: list[tuple[str, dict[str, Any], float]],
    results: list[tuple[Any, BaseException | None, int]],
    replies: dict[str, dict[str, Any]],
) -> None:
    """Each request's reply from its batcher result; an error shared by several requests
    (the engine failed for all of them at once) is logged once."""
    shared: dict[int, tuple[BaseException, list[str]]] = {}
    for (rid, _, _), (output, error, size) in zip(live, results, strict=True):
        if error is None:
            replies[rid] = {"ok": True, "output": output, "batch_size": size}
        elif not isinstance(error, DeadlineExceeded):  # expired: the view answered 504
            shared.setdefault(id(error), (error, []))[1].append(rid)
    for error, rids in shared.values():
        failed = failure_reply(version_id, error, request_ids=rids)
        replies.update({rid: dict(failed) for rid in rids})


def outage_over(queues: set[str]) -> list[str]:
    """A worker serves ``queues`` again: close the circuits of their versions that timeouts or
    a lost worker opened (what a dead worker looks like from the web tier), so traffic comes
    back now rather than after the cooldown. The versions whose circuit it closed."""
    breaker = CircuitBreaker()
    closed = []
    try:
        for version_id in selectors.active_version_ids(queues):
            if breaker.reason(version_id) in (outcome_kinds.TIMEOUT, outcome_kinds.WORKER_LOST):
                breaker.reset(version_id)
                closed.append(str(version_id))
    finally:
        connection.close()  # this runs on a thread of its own
    return closed
