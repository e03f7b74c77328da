"""The unary front door: ``POST /v1/models/{name}/infer`` served by the unary server
(uvicorn, ``config.unary``) on one event loop, without Django's middleware stack and REST
framework's request cycle, with exactly the answers the full stack would give.

:func:`eligible` picks the requests it may take from the scope alone; :func:`take` checks the
credential (from the process's key cache on the loop, else on a database thread), the scope,
the plan, the model's routing table and the well-formed body. What it serves joins the
version's web-side batch on the loop (``inference.transport.dispatch.LoopCollector``); everything
else (streams, a model with no cached routing table, a body the full stack must judge) goes, with
its body, to Django's ASGI handler. docs/architecture.md walks a request through it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.core.handlers.exception import response_for_exception
from django.db import close_old_connections, connections
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.cache import patch_vary_headers
from rest_framework import exceptions

from inference.api.serializers import InferRequestSerializer
from inference.catalog import selectors
from inference.catalog.selectors import RoutingTable
from inference.transport import unary_flow
from plumbing import ratelimit, untrusted
from plumbing.logcontext import log_stream_var
from plumbing.middleware import add_ratelimit_headers, begin_request, finish_request
from plumbing.net import client_ip, proxied
from plumbing.problems import exception_response
from tenants.authentication import authenticate_credential, presented_credential
from tenants.limits import PlanTicket, enforce_plan, plan_ticket, settle
from tenants.selectors import KeyContext, NotCached, cache_only

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

PATH = re.compile(r"^/v1/models/(?P<name>[-a-zA-Z0-9_]+)/infer$")
SCOPE = "infer"  # InferView.required_scope


def eligible(environ: dict[str, Any]) -> bool:
    """Whether the front door may take this request, from its environ alone (cheap: every
    request of the process asks; :func:`environ_of` builds it from the scope)."""
    if environ.get("REQUEST_METHOD") != "POST":
        return False
    if environ.get("QUERY_STRING"):
        return False  # ?stream=true and friends: Django's ASGI handler streams the answer
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


_security = SecurityMiddleware(lambda request: HttpResponse())
_frames = XFrameOptionsMiddleware(lambda request: HttpResponse())


@dataclass(frozen=True)
class Taken:
    """A request the front door serves: its credential's context, the model's routing table
    and the well-formed body."""

    ctx: KeyContext
    table: RoutingTable
    valid: dict[str, Any]


def take(
    request: HttpRequest,
    authenticate: Callable[[str], KeyContext],
    routing_table: Callable[[str], RoutingTable | None],
) -> Taken | None:
    """Whether the front door serves this request (else None: the full stack answers it)."""
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
    valid = InferRequestSerializer.fast(body)
    if valid is None:
        return None
    return Taken(ctx, table, valid)


def begin(request: HttpRequest, ctx: KeyContext) -> ratelimit.Check:
    """The request is the front door's from here: its id, clock and tenant; its per-IP
    limit."""
    begin_request(request)
    log_stream_var.set(None)  # the loop serves one request after another in one context
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
    """The keyword arguments of ``unary_flow.infer`` (or ``infer_async``) for a taken request."""
    return {
        "model": taken.table,
        "tenant": taken.ctx.tenant,
        "data": taken.valid["input"],
        "version": taken.valid.get("version"),
        "timeout_ms": taken.valid.get("timeout_ms"),
        "limits": ticket,
    }


def answered(answer: unary_flow.Answer) -> HttpResponse:
    response = HttpResponse(_encode(answer.body()), content_type="application/json")
    response["X-Sluice-Version"] = answer.version
    return response


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


def environ_of(scope: Scope) -> dict[str, Any]:
    """What :func:`eligible` reads, from an ASGI scope (header names as WSGI spells them)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "PATH_INFO": scope["path"],
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "REMOTE_ADDR": (scope.get("client") or ("",))[0],
    }
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = "HTTP_" + name
        value = raw_value.decode("latin-1")
        environ[name] = f"{environ[name]},{value}" if name in environ else value
    return environ


def _verify(raw: str) -> KeyContext:
    """A credential the process's cache could not verify alone (on a thread: it queries)."""
    try:
        return authenticate_credential(raw)
    finally:
        close_old_connections()


class FrontDoor:
    """The ASGI application: the front door in front of Django's ASGI handler (``full``)."""

    def __init__(self, full: ASGIHandler) -> None:
        self.full = full
        # Credentials being verified on a thread, by the whole presented secret: the requests
        # that present one while it loads wait for the same load (one query, not one each).
        self._verifying: dict[str, asyncio.Future[KeyContext]] = {}
        # The front door's database work (keys not cached, stale routing tables) on one thread of
        # its own: one connection, kept as CONN_MAX_AGE says, never a query on the loop.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frontdoor-db")

    def close(self) -> None:
        """Close the database thread's connection and end the thread."""
        self._db.submit(connections.close_all).result()
        self._db.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not eligible(environ_of(scope)):
            await self.full(scope, receive, send)
            return
        body = await self._body(receive)
        if body is None:
            return  # the client went away
        request = ASGIRequest(scope, io.BytesIO(body))
        try:
            response = await self.serve(request)
        except Exception as exc:  # noqa: BLE001 - the full stack's 500 problem and its log
            response = response_for_exception(request, exc)
        if response is None:
            await self.full(scope, _replay(body, receive), send)
            return
        await self.full.send_response(response, send)

    @staticmethod
    async def _body(receive: Receive) -> bytes | None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def serve(self, request: ASGIRequest) -> HttpResponseBase | None:
        """The answer, or None: the full stack answers (NotCached too)."""
        raw = presented_credential(request)
        if raw is None:
            return None
        try:
            ctx = await self._credential(raw)
        except exceptions.APIException:
            return None  # the full stack's 401 (the per-IP limit counts it first)
        taken = take(request, lambda _raw: ctx, self._routing_table)
        if taken is None:
            return None
        ip = begin(request, ctx)
        response: HttpResponseBase
        ticket = plan_ticket(ctx, ip=ip) if ratelimit.counts_in_batches() else None
        try:
            if ticket is None:
                enforce_plan(request, ctx, ip=ip)  # the embedded default's local counters
            answer = await unary_flow.infer_async(**infer_arguments(taken, ticket))
        except exceptions.APIException as exc:
            response = refused(request, ticket, exc)
        else:
            response = answered(answer)
        return finish(request, response, ticket.usages if ticket is not None else ())

    async def _credential(self, raw: str) -> KeyContext:
        """The credential's context: from the process's cache on the loop, else (a key not
        cached, or its ``last_used_at`` due) from a thread, once for everyone presenting
        it meanwhile."""
        try:
            with cache_only():
                return authenticate_credential(raw)
        except NotCached:
            pass
        loading = self._verifying.get(raw)
        if loading is None:
            loading = asyncio.get_running_loop().run_in_executor(self._db, _verify, raw)
            self._verifying[raw] = loading
            loading.add_done_callback(lambda _: self._verifying.pop(raw, None))
        return await asyncio.shield(loading)

    def _routing_table(self, name: str) -> RoutingTable | None:
        cached = selectors.routing_table_cached(name)
        if cached is None:
            return None  # the full stack reads it (and this process keeps the copy)
        due, table = cached
        if due:
            asyncio.get_running_loop().run_in_executor(self._db, _reload, name)
        return table


def _reload(name: str) -> None:
    try:
        selectors.routing_table_reload(name)
    except Exception:
        log.exception("reloading the routing table of %s failed", name)
    finally:
        close_old_connections()


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the full stack: the body the front door read, then the client's
    messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def again() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return again
