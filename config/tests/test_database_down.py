"""A database that does not answer gives 503 + ``Retry-After`` problem+json on every server,
never 500: real gunicorn (the full stack), daphne (``manage.py serve``:
REST views and an SSE view) and uvicorn (its lane and Django behind it), pointed at a
PostgreSQL address where nothing listens, or where something accepts and never answers."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from testing.processes import free_port, gunicorn, running, server_env, uvicorn

pytestmark = pytest.mark.e2e

KEY = "sk_live_abcdefgh." + "x" * 40  # well-formed: only the database can say it is unknown
INFER = ("POST", "/v1/models/digits/infer", {"input": {"pixels": [0.0] * 64}})
JOBS = ("GET", "/v1/jobs", None)
EVENTS = ("GET", "/v1/streams/s-1/events", None)
SERVERS = {
    "gunicorn": [INFER, JOBS],
    "uvicorn": [INFER, JOBS],  # the lane on the loop, then Django's ASGI handler
    "daphne": [JOBS, EVENTS],  # a REST view, an async SSE view
}


def command(server: str, port: int) -> list[str]:
    if server == "gunicorn":
        return gunicorn(port)
    if server == "uvicorn":
        return uvicorn(port)
    return [sys.executable, "manage.py", "serve", "--no-worker", "--port", str(port)]


@contextlib.contextmanager
def silent_database() -> Iterator[int]:
    """A port that accepts connections and never says a word (a hung database)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for conn in held:
            conn.close()


def assert_unavailable(base: str, method: str, path: str, body: object) -> float:
    started = time.monotonic()
    response = httpx.request(method, base + path, json=body, headers={"X-API-Key": KEY}, timeout=30)
    took = time.monotonic() - started
    assert response.status_code == 503, (path, response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == "urn:sluice:problem:unavailable"
    assert int(response.headers["Retry-After"]) > 0
    return took


@pytest.mark.parametrize("pool", ["0", "2"], ids=["per-thread", "pooled"])
@pytest.mark.parametrize("server", list(SERVERS))
def test_an_unreachable_database_answers_503_with_retry_after(server, pool, tmp_path):
    closed = free_port()  # nothing listens there
    env = server_env(
        f"postgres://postgres@127.0.0.1:{closed}/sluice",
        DATABASE_POOL_MAX_SIZE=pool,
        DATABASE_POOL_TIMEOUT="1",
        RATELIMIT_IP_RATE="",
    )
    port = free_port()
    with running(command(server, port), env, port=port) as base:
        for method, path, body in SERVERS[server]:
            assert_unavailable(base, method, path, body)


@pytest.mark.parametrize("server", list(SERVERS))
def test_a_database_that_never_answers_costs_a_request_its_connect_timeout(server):
    with silent_database() as db_port:
        env = server_env(
            f"postgres://postgres@127.0.0.1:{db_port}/sluice",
            DATABASE_CONNECT_TIMEOUT="2",
            RATELIMIT_IP_RATE="",
        )
        port = free_port()
        with running(command(server, port), env, port=port) as base:
            method, path, body = SERVERS[server][-1]
            assert assert_unavailable(base, method, path, body) < 10
