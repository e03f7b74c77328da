"""Request log streams (``X-Log-Stream: true`` on an API request gives it a ``logs`` stream);
starts the process's metrics recorder."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

from plumbing.logcontext import log_stream_var
from plumbing.problems import is_api_path
from streaming.eventlog import StreamNotFound, get_log
from streaming.loglines import PLATFORM_TENANT, open_log_stream
from streaming.metrics import start_recorder

log = logging.getLogger(__name__)


class RequestLogStreamMiddleware(MiddlewareMixin):
    """With ``X-Log-Stream: true``, the request's log lines (and those of Celery tasks it
    queues) go to a new stream ``logs.<random id>`` (never the client-chosen request id, which
    could name another tenant's stream), named in the answer's ``X-Log-Stream`` header. The
    stream is the platform's until the request authenticates, then its tenant's (an
    unauthenticated request's stream is left to expire, readable by staff only)."""

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        # Every serving process records its figures for the metrics stream (streaming.metrics).
        start_recorder()

    def process_request(self, request: HttpRequest) -> None:
        # Always set: a WSGI thread serves one request after another in the same context.
        log_stream_var.set(None)
        wanted = request.headers.get("X-Log-Stream", "").lower() in ("1", "true", "yes")
        if not (wanted and is_api_path(request.path)):
            return
        try:
            stream = open_log_stream(tenant_id=PLATFORM_TENANT, subject=uuid.uuid4().hex)
        except Exception:
            log.exception("request log stream unavailable")
            return
        request._sluice_log_stream = stream  # type: ignore[attr-defined]
        log_stream_var.set(stream)

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        stream = getattr(request, "_sluice_log_stream", None)
        if stream is None:
            return response
        tenant = getattr(request, "tenant", None)
        if tenant is not None:
            try:
                get_log().adopt(stream, tenant.pk)
            except StreamNotFound:
                return response
            except Exception:
                log.exception("request log stream %s: owner not recorded", stream)
                return response
            response["X-Log-Stream"] = stream
        # The variable stays set: the access-log line, written after this, belongs there too.
        return response
