"""Gunicorn settings for the WSGI web process (`make web`, the image's default command).

Every value comes from the environment so one image serves every size of deployment. The
access log stays off: ``plumbing.middleware.RequestLogMiddleware`` already writes one JSON line
per request (with the request id and tenant), and a second, unstructured line would only cost
disk and parsing.
"""

from __future__ import annotations

import os


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


# gthread: each worker process serves GUNICORN_THREADS requests at once, so a view waiting on a
# worker's result (unary inference) does not block the whole process. Unary requests mostly
# wait, and a process can only merge the requests it holds into one queued batch
# (inference.transport.dispatch), so threads are many and cheap: 32 per process. gthread, not an
# ASGI server, serves the unary endpoints because it is measured faster (docs/performance.md).
worker_class = "gthread"
workers = _int("WEB_CONCURRENCY", 2)
threads = _int("GUNICORN_THREADS", 32)
bind = f"0.0.0.0:{_int('PORT', 8000)}"

# A worker process silent for this long is killed and replaced. Under gthread the main loop
# keeps beating while threads serve, so this does not cut slow requests: those are bounded by
# the app's own deadlines and by nginx's proxy_read_timeout (60 s).
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
# Longer than nginx's upstream keepalive_timeout, so nginx (not gunicorn) closes idle
# connections and never sends a request on a socket gunicorn is closing.
keepalive = _int("GUNICORN_KEEPALIVE", 75)
# Recycle workers now and then so a slow leak cannot grow without bound; the jitter keeps
# them from all restarting at once.
max_requests = _int("GUNICORN_MAX_REQUESTS", 2000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 200)

# The heartbeat files live in memory: /tmp may be slow, and is read-only under Kubernetes'
# readOnlyRootFilesystem unless a volume is mounted there.
SHM = "/dev/shm"  # noqa: S108 - gunicorn's own advice for containers; files are per worker
worker_tmp_dir = SHM if os.path.isdir(SHM) else None

# Peers whose X-Forwarded-Proto gunicorn believes (wsgi.url_scheme): the settings Django reads
# (plumbing/net.py), so the two never disagree: TRUSTED_PROXY_IPS, and nobody at all unless
# TRUSTED_PROXY_COUNT says a proxy is in front. gunicorn never takes the client address from
# X-Forwarded-For; Django does, from the same peers.
forwarded_allow_ips = (
    os.environ.get("TRUSTED_PROXY_IPS", "127.0.0.1,::1")
    if _int("TRUSTED_PROXY_COUNT", 0) > 0
    else ""
)

accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
proc_name = "sluice-web"


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's live gauges from the shared Prometheus directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def on_starting(server: object) -> None:
    """Load the settings once in the master: a missing SECRET_KEY then stops gunicorn with the
    settings' one-line message, instead of every worker failing and being respawned forever."""
    import importlib

    importlib.import_module(os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings"))
