"""The media producer task: ids and JSON in, a service call; events go to the stream log."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from inference.media import services


@shared_task(name="media_stream", ignore_result=True, max_retries=0, acks_late=False)
def media_stream(
    version_id: int, stream_id: str, item: dict[str, Any], input_stream: str | None = None
) -> None:
    # No retries: a stream's events cannot be produced twice. The limits are cooperative
    # (MEDIA_MAX_PROCESSING_SECONDS between chunks): the threads pool enforces no time limit.
    services.media_produce(
        version_id=version_id, stream_id=stream_id, item=item, input_stream=input_stream
    )
