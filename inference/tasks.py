"""Celery tasks of the inference app. Thin: ids and JSON in, a service call, nothing returned
(the answer travels through :mod:`inference.transport.replies`)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from inference.catalog import canary
from inference.registry import checks
from inference.transport import replies, streams


@shared_task(
    name="inference_predict_batch",
    ignore_result=True,
    # As above: a redelivered batch past its deadlines is dropped, item by item.
    max_retries=0,
    time_limit=settings.INFERENCE_MAX_TIMEOUT_MS // 1000 + 30,
    soft_time_limit=settings.INFERENCE_MAX_TIMEOUT_MS // 1000 + 20,
)
def inference_predict_batch(
    version_id: int,
    queue: str,
    items: list[list[Any]],
    reply_to: str,
    batch_id: str,
    shadow: bool = False,
) -> None:
    """Many requests (``[request_id, payload, deadline]`` each) collected by a web process;
    one answer message for all of them on ``reply_to``. ``shadow`` marks a shadow copy in
    monitors (the message's kwargsrepr); it is run and answered like any batch."""
    replies.predict_batch(
        version_id=version_id,
        queue=queue,
        items=[(str(rid), payload, float(deadline)) for rid, payload, deadline in items],
        reply_to=reply_to,
        batch_id=batch_id,
    )


@shared_task(
    name="inference_check",
    bind=True,
    ignore_result=True,
    # No retries: the operator's change waits for this answer with its own timeout.
    max_retries=0,
    time_limit=settings.INFERENCE_CHECK_TIMEOUT_SECONDS + 30,
    soft_time_limit=settings.INFERENCE_CHECK_TIMEOUT_SECONDS + 20,
)
def inference_check(
    self: Any,
    version_id: int,
    examples: list[dict[str, Any]],
    declared: dict[str, dict[str, Any]],
    reply_id: str,
    deadline: float,
) -> None:
    """The pre-activation check of a version (:mod:`inference.registry.checks`), answered on
    ``reply_id`` with the name of the worker that ran it."""

    found = checks.check_run(
        version_id=version_id, examples=examples, declared=declared, deadline=deadline
    )
    replies.reply_publish(reply_id, {**found, "worker": self.request.hostname})


@shared_task(
    name="inference_canary",
    ignore_result=True,
    # Beat sends the next one in 10 s; a judgement is only as good as its fresh windows.
    max_retries=0,
    time_limit=60,
    soft_time_limit=50,
)
def inference_canary() -> None:
    """Judge every model's canaries against its canary policy (:mod:`inference.catalog.canary`)."""

    canary.evaluate_all()


@shared_task(
    name="inference_stream",
    ignore_result=True,
    # No retries: a client is reading the stream now; a redelivery would repeat events.
    max_retries=0,
    time_limit=settings.INFERENCE_MAX_TIMEOUT_MS // 1000 + 30,
    soft_time_limit=settings.INFERENCE_MAX_TIMEOUT_MS // 1000 + 20,
)
def inference_stream(
    version_id: int,
    kind: str,
    items: list[dict[str, Any]],
    stream_id: str,
    deadline: float,
    queue: str,
) -> None:
    streams.stream_run(
        version_id=version_id,
        kind=kind,
        items=items,
        stream_id=stream_id,
        deadline=deadline,
        queue=queue,
    )
