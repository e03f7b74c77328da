"""Project-wide middleware: forwarded headers from trusted proxies only, request log and id,
API body limit, per-IP rate limit."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

from plumbing import metrics, ratelimit
from plumbing.bodylimit import body_limit
from plumbing.logcontext import request_id_var
from plumbing.net import client_ip, drop_untrusted_forwarded_headers
from plumbing.problems import (
    database_unavailable,
    database_unavailable_response,
    is_api_path,
    problem_response,
)

access_log = logging.getLogger("sluice.access")
log = logging.getLogger(__name__)
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def begin_request(request: HttpRequest) -> None:
    """Give the request its id (a sane incoming ``X-Request-ID``, else a new one) and start
    its clock."""
    incoming = request.META.get("HTTP_X_REQUEST_ID", "")
    rid = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
    request.request_id = rid  # type: ignore[attr-defined]
    request._sluice_started = time.perf_counter()  # type: ignore[attr-defined]
    request_id_var.set(rid)


def finish_request(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Name the request id in the answer, count the request and log its one line."""
    rid = getattr(request, "request_id", None)
    if rid is None:
        return response
    response["X-Request-ID"] = rid
    tenant = getattr(request, "tenant", None)
    seconds = time.perf_counter() - request._sluice_started  # type: ignore[attr-defined]
    metrics.observe_request(
        asgi=isinstance(request, ASGIRequest),
        method=str(request.method),
        status=response.status_code,
        seconds=seconds,
    )
    if access_log.isEnabledFor(logging.INFO):
        extra: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2),
            "tenant": getattr(tenant, "slug", None),
        }
        access_log.info("%s %s %s", request.method, request.path, response.status_code, extra=extra)
    return response


def add_ratelimit_headers(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """The ``RateLimit-*`` headers of whichever limit (IP, key, tenant) was tightest."""
    usage: ratelimit.Usage | None = getattr(request, "_sluice_ratelimit", None)
    if usage is not None:
        for name, value in ratelimit.headers_for(usage).items():
            response.setdefault(name, value)
    return response


class ProxyHeadersMiddleware(MiddlewareMixin):
    """First in the stack: ``X-Forwarded-*`` headers count only when a trusted proxy sent
    them (``TRUSTED_PROXY_COUNT``, ``TRUSTED_PROXY_IPS``); a client's own are dropped before
    anything (the HTTPS redirect, the scheme of built URLs) reads them."""

    def process_request(self, request: HttpRequest) -> None:
        drop_untrusted_forwarded_headers(request)


class RequestLogMiddleware(MiddlewareMixin):
    """Assigns a request id (or keeps a sane incoming ``X-Request-ID``) and logs one line per
    request: id, method, path, status, duration and tenant. Keys are never logged."""

    def process_request(self, request: HttpRequest) -> None:
        begin_request(request)

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return finish_request(request, response)


class ApiBodyLimitMiddleware(MiddlewareMixin):
    """413 before reading a body whose declared length is over the path's limit
    (``plumbing.bodylimit``: the servers hold it first, chunked bodies too)."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        limit = body_limit(request.path)
        if limit is None:
            return None
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return problem_response(400, slug="malformed-request", detail="Bad Content-Length.")
        if length > limit:
            return problem_response(
                413,
                slug="payload-too-large",
                detail=f"Request body is {length} bytes; the limit is {limit}.",
                instance=request.path,
            )
        return None


class ApiIpRateLimitMiddleware(MiddlewareMixin):
    """Per-client-IP limit on every API path (``RATELIMIT_IP_RATE``), and the ``RateLimit-*``
    headers of whichever limit (IP, key, tenant) is tightest for this request."""

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if not is_api_path(request.path):
            return None
        try:
            usage = ratelimit.hit(
                request, group="ip", value=client_ip(request), rate=settings.RATELIMIT_IP_RATE
            )
        except ratelimit.LimiterUnavailable:
            return problem_response(
                503,
                slug="unavailable",
                detail="Rate limiting is unavailable; retry later.",
                headers={"Retry-After": "5"},
            )
        if usage is not None and usage.limited:
            return problem_response(
                429,
                slug="rate-limited",
                detail=f"More than {usage.limit} requests from this address in the window.",
                instance=request.path,
                headers=ratelimit.headers_for(usage),
            )
        return None

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return add_ratelimit_headers(request, response)


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A view that found the database unreachable (or out of connections) answers 503 with
    ``Retry-After``, not 500: the request may be retried as it is. Errors raised outside a
    view reach ``plumbing.problems.handler500``, which answers the same."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not database_unavailable(exception):
            return None
        log.error("database unavailable, answered 503: %s", exception)
        return database_unavailable_response(request)


class StreamReleasesDatabaseMiddleware(MiddlewareMixin):
    """A streaming answer (SSE, NDJSON, media) may stay open for an hour: the request's
    database connection goes back (to the pool, or closed) before the stream starts, so an
    open stream does not hold one of its process's connections (docs/deployment.md). What the
    stream reads later takes a connection again."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if response.streaming:
            # This thread's connections (the ones that ran the view); one inside a
            # transaction is not the view's to give back (a test's, say).
            for connection in connections.all(initialized_only=True):
                if not connection.in_atomic_block:
                    connection.close()
        return response
