"""Log plumbing that must import nothing from Django apps (logging is configured first)."""

from __future__ import annotations

import contextvars
import logging

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The stream the current work's log lines are published to (streaming.loglines), if any.
log_stream_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "log_stream", default=None
)


class RequestIdFilter(logging.Filter):
    """Stamps every log record with the id of the request being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True
