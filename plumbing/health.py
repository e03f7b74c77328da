"""Liveness and readiness probes (outside the API: no auth, no rate limit)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable

from celery import current_app as app
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from plumbing import presence

CHECK_TIMEOUT_SECONDS = 2


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Alive: answers without touching any dependency."""
    return JsonResponse({"status": "ok"})


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis() -> None:
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    finally:
        client.close()


def _broker() -> None:
    with app.connection_for_write(settings.CELERY_BROKER_URL) as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)


def checks() -> dict[str, Callable[[], None]]:
    found: dict[str, Callable[[], None]] = {"database": _database}
    if settings.REDIS_URL:
        found["redis"] = _redis
    # In-process (memory) and local files (the embedded spool): nothing to reach.
    if not settings.CELERY_BROKER_URL.startswith(("memory://", "filesystem://")):
        found["broker"] = _broker
    return found


def _run(check: Callable[[], None]) -> dict[str, object]:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported by name
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        connection.close_if_unusable_or_obsolete()
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _workers() -> dict[str, object]:
    """How many workers consume each queue this deployment needs (``plumbing.presence``)."""
    try:
        found = presence.consumers(presence.needed_queues())
    except Exception as exc:  # noqa: BLE001 - reported by name, as the other checks
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "queues": {queue: len(names) for queue, names in found.items()}}


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready: every configured dependency answers within its timeout; 503 names what is down.

    Queues without a worker do not make this process unready: it still serves everything
    else, and answers inference on those queues with a clear 503 ``no-worker`` at once —
    taking every web pod out of the load balancer (or restarting it) because the workers are
    down would turn a partial outage into a total one. They make the status ``degraded``
    (200) and are listed in ``without_workers``."""
    found = checks()
    results: dict[str, dict[str, object]] = {}
    # The database check stays on this thread (Django connections are per thread).
    results["database"] = _run(found.pop("database"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(found))) as pool:
        futures = {name: pool.submit(_run, fn) for name, fn in found.items()}
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=CHECK_TIMEOUT_SECONDS + 1)
            except concurrent.futures.TimeoutError:
                results[name] = {"ok": False, "error": "timed out"}
    down = sorted(name for name, r in results.items() if not r["ok"])
    without: list[str] = []
    if "database" not in down and "redis" not in down:
        results["workers"] = workers = _workers()
        queues = workers.get("queues")
        if isinstance(queues, dict):
            without = sorted(queue for queue, count in queues.items() if not count)
    status = "unavailable" if down else "degraded" if without else "ok"
    body = {"status": status, "down": down, "without_workers": without, "checks": results}
    return JsonResponse(body, status=503 if down else 200)
