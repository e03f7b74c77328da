"""The express lane: ``POST /v1/models/{name}/infer`` without the middleware stack and REST
framework's request cycle, for the requests that need neither.

On one CPU core Django's full stack (eleven middleware, then DRF's negotiation,
authentication, permission, throttle and exception machinery) costs more than the whole
budget of a unary request at the issue's target rate (docs/performance.md). The lane is a
second Django WSGI handler with no middleware of its own, in front of the full one
(``config.wsgi``). It serves a request only when it can give exactly the answer the full
stack would; anything else is handed, unchanged and with its body, to the full stack:

- Before Django builds the request (:func:`eligible`): the method, the path, no query string
  (``?stream=true`` and friends), a JSON body of declared length within
  ``API_MAX_BODY_BYTES``, a key or token presented, and none of what the skipped middleware
  would act on (``Origin`` for CORS, ``X-Log-Stream``, a plain-HTTP request that
  ``SECURE_SSL_REDIRECT`` would redirect).
- After it (:func:`serve`): the credential verifies (the process's key cache: no query) and
  has the ``infer`` scope, the tenant's plan allows the model, the model has a routing table,
  and the body parses and passes the compiled check of well-formed input.

From there the lane does what the skipped layers would: the request id and log line, the
per-IP, tenant and key limits and the monthly quota, the security and frame-options headers,
the ``RateLimit-*`` headers, and every later error (422 from the version's input schema, 429,
503, 504, 502) as the same problem+json. On Redis the four counters are counted with the
request's web-side batch — one round trip for every request of the batch
(``tenants.limits.settle`` in ``inference.dispatch``), with the decisions each request would
have had alone — where the full stack spends two round trips per request; a request refused
before its batch is counted then. The inference itself is the same call as the view's
(:func:`inference.serving.infer`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.cache import patch_vary_headers
from rest_framework import exceptions

from inference import selectors, serving
from inference.selectors import RoutingTable
from inference.serializers import InferRequestSerializer
from inference.views import stream_answer
from plumbing import ratelimit, untrusted
from plumbing.logcontext import log_stream_var
from plumbing.middleware import add_ratelimit_headers, begin_request, finish_request
from plumbing.net import client_ip, proxied
from plumbing.problems import exception_response
from tenants.authentication import authenticate_credential, presented_credential
from tenants.limits import PlanTicket, enforce_plan, plan_ticket, settle
from tenants.selectors import KeyContext

PATH = re.compile(r"^/v1/models/(?P<name>[-a-zA-Z0-9_]+)/infer$")
SCOPE = "infer"  # InferView.required_scope


# The query strings the lane takes: none, or asking for the answer as Server-Sent Events (as
# inference.views.wants_stream reads them).
QUERIES = frozenset({"", "stream=true", "stream=1", "stream=yes"})


def eligible(environ: dict[str, Any]) -> bool:
    """Whether the lane may take this request, from the WSGI environ alone (cheap: every
    request of the process asks)."""
    if environ.get("REQUEST_METHOD") != "POST":
        return False
    if str(environ.get("QUERY_STRING", "")).lower() not in QUERIES:
        return False
    if not PATH.match(environ.get("PATH_INFO", "")):
        return False
    content_type = environ.get("CONTENT_TYPE", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        return False
    if "charset" in content_type.lower() and "utf-8" not in content_type.lower():
        return False
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    if not 0 < length <= settings.API_MAX_BODY_BYTES:
        return False
    if not (environ.get("HTTP_X_API_KEY") or environ.get("HTTP_AUTHORIZATION")):
        return False
    if "HTTP_ORIGIN" in environ or "HTTP_X_LOG_STREAM" in environ:
        return False
    return not settings.SECURE_SSL_REDIRECT or _secure(environ)


def _secure(environ: dict[str, Any]) -> bool:
    """What ``request.is_secure()`` will say (SECURE_PROXY_SSL_HEADER honoured from a trusted
    proxy, as plumbing.middleware.ProxyHeadersMiddleware does)."""
    header = settings.SECURE_PROXY_SSL_HEADER
    if header is not None and proxied(environ):
        name, value = header
        if name in environ:
            return str(environ[name]).split(",")[0].strip() == value
    return environ.get("wsgi.url_scheme") == "https"


class ExpressHandler(WSGIHandler):
    """Django's WSGI handler (request signals, the ``WSGIRequest``, response closing) with
    :func:`serve` as its whole middleware chain; ``full`` answers what the lane hands over."""

    def __init__(self, full: WSGIHandler) -> None:
        self.full = full
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        # The lane's own chain: no middleware; serve() does what the lane needs of them.
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        # An unexpected error still gets the full stack's 500 problem (handler500) and log.
        self._middleware_chain = convert_exception_to_response(self._serve)

    def _serve(self, request: HttpRequest) -> HttpResponseBase:
        return serve(request, self.full.get_response)


def lane(full: WSGIHandler) -> Callable[..., Iterable[bytes]]:
    """The project's WSGI application: the express lane in front of the full handler."""
    express = ExpressHandler(full)

    def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if eligible(environ):
            return express(environ, start_response)
        return full(environ, start_response)

    return application


_security = SecurityMiddleware(lambda request: HttpResponse())
_frames = XFrameOptionsMiddleware(lambda request: HttpResponse())


@dataclass(frozen=True)
class Taken:
    """A request the lane serves: its credential's context, the model's routing table, the
    well-formed body and whether it asks for a stream."""

    ctx: KeyContext
    table: RoutingTable
    valid: dict[str, Any]
    stream: bool


def take(
    request: HttpRequest,
    authenticate: Callable[[str], KeyContext],
    routing_table: Callable[[str], RoutingTable | None],
) -> Taken | None:
    """Whether the lane serves this request (else None: the full stack answers it)."""
    match = PATH.match(request.path_info)
    raw = presented_credential(request)
    if match is None or raw is None:
        return None
    try:
        ctx = authenticate(raw)  # revoked, expired, inactive tenant: 401
    except exceptions.APIException:
        return None  # the per-IP limit counts failed credentials first
    name = match["name"]
    if not ctx.has_scope(SCOPE) or not ctx.tenant.allows_model(name):
        return None
    table = routing_table(name)
    if table is None:
        return None
    try:
        body = untrusted.loads(request.body)  # the parser policy of the full stack's view
    except ValueError:
        return None  # the full stack answers it: 400 or 422, as for any other body
    stream = bool(request.META.get("QUERY_STRING"))  # eligible(): ?stream=true
    # A stream of one input (``inputs``, an analysis of many, is the full stack's) takes the
    # unary body's fields: the same fast check.
    many = stream and isinstance(body, dict) and "inputs" in body
    valid = InferRequestSerializer.fast(body) if not many else None
    if valid is None:
        return None
    return Taken(ctx, table, valid, stream)


def begin(request: HttpRequest, ctx: KeyContext) -> ratelimit.Check:
    """The request is the lane's from here: its id, clock and tenant; its per-IP limit."""
    begin_request(request)
    log_stream_var.set(None)  # a thread serves one request after another in one context
    request.tenant = ctx.tenant  # type: ignore[attr-defined]
    return ratelimit.Check("ip", client_ip(request), settings.RATELIMIT_IP_RATE)


def refused(
    request: HttpRequest, ticket: PlanTicket | None, exc: exceptions.APIException
) -> HttpResponseBase:
    """The problem for a unary request refused after it was taken."""
    if ticket is not None and not ticket.counted:
        # Refused before its batch counted it (the version's input schema, no route, a
        # deadline that passed in the batch): counted now, as the full stack's throttle
        # would have before the view — and a limit's refusal comes first, as there.
        settle([ticket])
        exc = ticket.refusal or exc
    return exception_response(request, exc)


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def infer_arguments(taken: Taken, ticket: PlanTicket | None) -> dict[str, Any]:
    """The keyword arguments of ``serving.infer`` (or ``infer_async``) for a taken request."""
    return {
        "model": taken.table,
        "tenant": taken.ctx.tenant,
        "data": taken.valid["input"],
        "version": taken.valid.get("version"),
        "timeout_ms": taken.valid.get("timeout_ms"),
        "limits": ticket,
    }


def answered(answer: serving.Answer) -> HttpResponse:
    response = HttpResponse(_encode(answer.body()), content_type="application/json")
    response["X-Sluice-Version"] = answer.version
    return response


def serve(
    request: HttpRequest, full: Callable[[HttpRequest], HttpResponseBase]
) -> HttpResponseBase:
    """Answer the request as the full stack would, or hand it to ``full``."""
    assert isinstance(request, WSGIRequest)
    taken = take(request, authenticate_credential, selectors.routing_table)
    if taken is None:
        return full(request)
    ctx, table, valid = taken.ctx, taken.table, taken.valid
    # From here the request is the lane's: it is counted, answered and logged here.
    ip = begin(request, ctx)
    response: HttpResponseBase
    if taken.stream:
        try:
            enforce_plan(request, ctx, ip=ip)  # one round trip for the four counters
            response = stream_answer(request, ctx.tenant, table, valid)
        except exceptions.APIException as exc:
            response = exception_response(request, exc)
        return finish(request, response, ())
    # On Redis the limits are counted with the request's web-side batch: one round trip for
    # the whole batch (inference.dispatch); elsewhere now, for this request alone.
    ticket = plan_ticket(ctx, ip=ip) if ratelimit.counts_in_batches() else None
    try:
        if ticket is None:
            enforce_plan(request, ctx, ip=ip)
        answer = serving.infer(**infer_arguments(taken, ticket))
    except exceptions.APIException as exc:
        response = refused(request, ticket, exc)
    else:
        response = answered(answer)
    return finish(request, response, ticket.usages if ticket is not None else ())


def finish(
    request: HttpRequest, response: HttpResponseBase, usages: Iterable[Any]
) -> HttpResponseBase:
    """What REST framework's view and the skipped middleware would add to any answer."""
    response["Allow"] = "POST, OPTIONS"
    patch_vary_headers(response, ("Accept", "origin"))
    for usage in usages:
        ratelimit.remember(request, usage)
    # The middleware only sets headers: any response will do (the stubs say HttpResponse).
    answer = cast(HttpResponse, response)
    answer = _security.process_response(request, answer)
    answer = _frames.process_response(request, answer)
    add_ratelimit_headers(request, answer)
    return finish_request(request, answer)
