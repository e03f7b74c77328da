"""Celery tasks of the inference app. Thin: ids and JSON in, a service call, nothing returned
(the answer travels through :mod:`inference.replies`)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from inference import serving


@shared_task(
    name="inference_predict",
    ignore_result=True,
    # No retries: the client waits with a deadline, and a redelivered message (acks_late after
    # a lost worker) past that deadline is dropped by the service, not run.
    max_retries=0,
    time_limit=settings.INFERENCE_MAX_TIMEOUT_MS // 1000 + 30,
    soft_time_limit=settings.INFERENCE_MAX_TIMEOUT_MS // 1000 + 20,
)
def inference_predict(
    version_id: int,
    payload: dict[str, Any],
    request_id: str,
    deadline: float,
    shadow: bool = False,
) -> None:
    serving.predict(
        version_id=version_id,
        payload=payload,
        request_id=request_id,
        deadline=deadline,
        shadow=shadow,
    )


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
    from inference import streams

    streams.stream_run(
        version_id=version_id,
        kind=kind,
        items=items,
        stream_id=stream_id,
        deadline=deadline,
        queue=queue,
    )
