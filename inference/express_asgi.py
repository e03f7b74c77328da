"""The express lane on an event loop: ``POST /v1/models/{name}/infer`` served by an ASGI
server (uvicorn) without a thread per request.

Under gunicorn each request crosses threads three times — the poller hands it to a worker
thread, which sleeps until the reply reader wakes it — and on one CPU core those hand-offs,
gunicorn's per-request ``Future`` and Django's WSGI handler cost more than the rest of the
request (docs/performance.md). Here one event loop parses the HTTP (httptools), runs the lane's
checks and joins the version's batch (:class:`inference.dispatch.LoopCollector`); the batch's
answer resolves its requests' futures with one call into the loop each, from the reply
reader's thread.

It takes exactly the requests the WSGI lane (:mod:`inference.express`) takes and answers them
the same way (the same helpers: :func:`~inference.express.take`, ``begin``, ``refused``,
``answered``, ``finish``), and the loop never waits on the database: the credential verifies
from the process's key cache (a key not cached yet, or whose ``last_used_at`` is due, is
verified on the lane's database thread, once for all the requests presenting it meanwhile),
and the model's routing table comes from the process's copy (a stale copy is reloaded on that
thread while the loop keeps using it). A model with no copy yet, streams (``?stream=true``)
and everything the WSGI lane would hand over go, with their body, to Django's own ASGI
handler: the same answers, at Django's cost.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.core.handlers.exception import response_for_exception
from django.db import close_old_connections, connections
from django.http import HttpResponseBase
from rest_framework import exceptions

from inference import selectors, serving
from inference.express import answered, begin, eligible, finish, infer_arguments, refused, take
from inference.selectors import RoutingTable
from plumbing import ratelimit
from tenants.authentication import authenticate_credential, presented_credential
from tenants.limits import enforce_plan, plan_ticket
from tenants.selectors import KeyContext, NotCached, cache_only

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


def environ_of(scope: Scope) -> dict[str, Any]:
    """What :func:`inference.express.eligible` reads, from an ASGI scope (header names as
    WSGI spells them)."""
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


class Lane:
    """The ASGI application: the loop's lane in front of Django's ASGI handler (``full``)."""

    def __init__(self, full: ASGIHandler) -> None:
        self.full = full
        # Credentials being verified on a thread, by the whole presented secret: the requests
        # that present one while it loads wait for the same load (one query, not one each).
        self._verifying: dict[str, asyncio.Future[KeyContext]] = {}
        # The lane's database work (keys not cached, stale routing tables) on one thread of
        # its own: one connection, kept as CONN_MAX_AGE says, never a query on the loop.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="express-asgi-db")

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
        if taken is None or taken.stream:
            return None
        ip = begin(request, ctx)
        response: HttpResponseBase
        ticket = plan_ticket(ctx, ip=ip) if ratelimit.counts_in_batches() else None
        try:
            if ticket is None:
                enforce_plan(request, ctx, ip=ip)  # the embedded default's local counters
            answer = await serving.infer_async(**infer_arguments(taken, ticket))
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
    """``receive`` for the full stack: the body the lane read, then the client's messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def again() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return again
