"""Overload shedding for the WSGI process (gunicorn): a bound on the requests one process
serves at once, like the inference queues' bound, so that excess requests get 503 with
``Retry-After`` at once instead of waiting behind the others.

gunicorn's gthread worker gives each request a thread when one is free and queues the rest
out of the application's sight, so a process under more load than it can serve answers
everything, late (seconds at the 99th percentile). ``WEB_MAX_IN_FLIGHT`` is kept below
``GUNICORN_THREADS``: the threads above it take the queued requests as fast as they come and,
while the bound is full, answer each with the 503 without reading its body. Health probes and
metrics are never shed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.conf import settings

from plumbing.bodylimit import WSGIApp
from plumbing.metrics import observe_request
from plumbing.problems import PROBLEM_CONTENT_TYPE, is_api_path, problem_body

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
NEVER_SHED = ("/healthz", "/readyz", "/metrics")


class Admission:
    """The requests a process serves at once, up to a bound."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.serving = 0
        self._lock = threading.Lock()
        self._refused = 0
        self._reported = 0.0

    def enter(self) -> bool:
        with self._lock:
            if self.serving >= self.bound:
                return False
            self.serving += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.serving -= 1

    def refused(self) -> None:
        """Count a refusal; say so at most once a second (a line per refusal would add to
        the overload it reports)."""
        with self._lock:
            self._refused += 1
            now = time.monotonic()
            if now - self._reported < 1.0:
                return
            count, self._refused, self._reported = self._refused, 0, now
        log.warning("at capacity (%d requests in flight): %d answered 503", self.bound, count)


class _Closing:
    """The application's response iterable, leaving admission when the server closes it
    (a streamed answer counts until its last byte)."""

    def __init__(self, body: Iterable[bytes], leave: Callable[[], None]) -> None:
        self.body = body
        self.leave = leave

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.leave()


class ShedWSGI:
    """The WSGI application (``app``) behind an :class:`Admission` of ``WEB_MAX_IN_FLIGHT``."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.admission = Admission(settings.WEB_MAX_IN_FLIGHT)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path in NEVER_SHED:
            return self.app(environ, start_response)
        if not self.admission.enter():
            return self._shed(environ, path, start_response)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self.admission.leave()
            raise
        return _Closing(body, self.admission.leave)

    def _shed(
        self, environ: dict[str, Any], path: str, start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        detail = "The server is at capacity; retry later."
        if is_api_path(path):
            body = json.dumps(
                problem_body(503, slug="overloaded", detail=detail, instance=path)
            ).encode()
            content_type = PROBLEM_CONTENT_TYPE
        else:
            body, content_type = detail.encode(), "text/plain"
        start_response(
            "503 Service Unavailable",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Retry-After", str(RETRY_AFTER_SECONDS)),
            ],
        )
        self.admission.refused()
        observe_request(
            asgi=False,
            method=str(environ.get("REQUEST_METHOD")),
            status=503,
            seconds=time.perf_counter() - started,
        )
        return [body]
