"""The unary front door (inference/api/frontdoor.py), called in process: what it
serves itself, what it hands to Django's ASGI handler, and that it never queries on the loop.
The answers' equality with gunicorn's is the e2e test's (test_e2e, the unary server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from inference.api.frontdoor import FrontDoor, eligible, environ_of
from inference.catalog import selectors
from inference.tests.conftest import lane_queue, make_version
from tenants import selectors as key_selectors


# Serving needs both: the batches travel on the Redis lane, and the front door verifies keys
# and reloads routing tables on threads, which must see the rows.
def redis_and_rows(test: Any) -> Any:
    test = pytest.mark.django_db(transaction=True)(test)
    reason = "its batches travel on the Redis lane"
    return pytest.mark.skipif(not settings.REDIS_URL, reason=reason)(test)


class Counting(ASGIHandler):
    """Django's ASGI handler, counting what the front door hands it."""

    handed: int = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.handed += 1
        await super().__call__(scope, receive, send)


def call(
    app: FrontDoor, body: Any, headers: dict[str, str], path: str, *, raw: bytes | None = None
) -> tuple[int, dict, Any]:
    """``body`` as JSON (or ``raw`` as it is) through ``app``: status, headers, answer."""
    raw = raw if raw is not None else json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    incoming = [{"type": "http.request", "body": raw, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    heads = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    content = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], heads, json.loads(content)


@pytest.fixture
def served(lanes: Any, key: Any, settings: Any, worker_everywhere: None) -> Any:
    """A doubler on a queue of its own with a lane thread serving it (no Celery worker to
    announce it: every queue counts as served), and the app."""
    queue = lane_queue()
    settings.INFERENCE_QUEUES = [*settings.INFERENCE_QUEUES, queue]
    make_version(queue=queue, max_batch_size=8, max_delay_ms=0)
    lanes(queue).start()
    full = Counting()
    app = FrontDoor(full)
    yield app, full, {"X-API-Key": key[1]}
    app.close()


@redis_and_rows
def test_it_serves_a_request_without_django_and_hands_over_the_first_of_a_model(
    served,
) -> None:
    app, full, headers = served
    path = "/v1/models/doubler/infer"
    # Not in the process's routing copy yet: the full stack reads it (and keeps the copy).
    status, _, body = call(app, {"input": {"x": 2}}, headers, path)
    assert (status, body["output"], full.handed) == (200, {"y": 4}, 1)
    status, heads, body = call(app, {"input": {"x": 5}}, headers, path)
    assert (status, body["output"], full.handed) == (200, {"y": 10}, 1)
    assert heads["x-sluice-version"] == "1" and heads["x-request-id"]
    assert heads["x-frame-options"] == "DENY" and "ratelimit-limit" in heads


@redis_and_rows
def test_a_key_not_cached_yet_is_verified_on_a_thread_not_handed_over(served) -> None:
    app, full, headers = served
    selectors.routing_table("doubler")
    key_selectors._cache.clear()
    status, _, body = call(app, {"input": {"x": 3}}, headers, "/v1/models/doubler/infer")
    assert (status, body["output"], full.handed) == (200, {"y": 6}, 0)


@redis_and_rows
def test_a_stale_routing_table_is_reloaded_on_a_thread_while_the_copy_serves(
    served, settings
) -> None:
    app, full, headers = served
    settings.INFERENCE_ROUTING_CACHE_SECONDS = 0  # every copy is stale at once
    selectors.routing_table("doubler")
    for x in range(3):
        status, _, body = call(app, {"input": {"x": x}}, headers, "/v1/models/doubler/infer")
        assert (status, body["output"]) == (200, {"y": 2 * x})
    assert full.handed == 0


@redis_and_rows
def test_what_the_front_door_does_not_serve_gets_the_full_stacks_answer(served) -> None:
    app, full, headers = served
    selectors.routing_table("doubler")
    path = "/v1/models/doubler/infer"
    # The version's input schema refuses it: the front door's own 422, as the full stack's.
    status, heads, _ = call(app, {"input": {"x": "two"}}, headers, path)
    assert (status, heads["content-type"], full.handed) == (422, "application/problem+json", 0)
    # A credential that does not verify: the full stack's 401 (the per-IP limit counts it).
    status, heads, _ = call(app, {"input": {"x": 1}}, {"X-API-Key": "sk_x.y"}, path)
    assert (status, heads["content-type"], full.handed) == (401, "application/problem+json", 1)
    # A body that is not the unary shape (an analysis of many inputs is the full stack's).
    status, _, _ = call(app, {"inputs": [{"x": 1}]}, headers, path)
    assert full.handed == 2


def test_the_scope_reads_as_a_wsgi_environ() -> None:
    environ = environ_of(
        {
            "method": "POST",
            "path": "/v1/models/m/infer",
            "query_string": b"stream=true",
            "scheme": "https",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"12"),
                (b"x-api-key", b"k"),
                (b"x-forwarded-for", b"1.2.3.4"),
                (b"x-forwarded-for", b"5.6.7.8"),
            ],
        }
    )
    assert environ["CONTENT_TYPE"] == "application/json" and environ["CONTENT_LENGTH"] == "12"
    assert environ["HTTP_X_API_KEY"] == "k" and environ["QUERY_STRING"] == "stream=true"
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.2.3.4,5.6.7.8"
    assert environ["wsgi.url_scheme"] == "https"


PATH = "/v1/models/digits/infer"


@pytest.mark.parametrize(
    ("environ", "taken"),
    [
        ({}, True),
        ({"REQUEST_METHOD": "GET"}, False),
        # A stream is Django's (its ASGI handler streams the events): handed over unread.
        ({"QUERY_STRING": "stream=true"}, False),
        ({"QUERY_STRING": "stream=false"}, False),
        ({"QUERY_STRING": "version=2"}, False),
        ({"PATH_INFO": "/v1/models/digits"}, False),
        ({"PATH_INFO": "/v1/models/a/b/infer"}, False),
        ({"CONTENT_TYPE": "text/plain"}, False),
        ({"CONTENT_TYPE": "application/json; charset=utf-8"}, True),
        ({"CONTENT_TYPE": "application/json; charset=latin-1"}, False),
        ({"CONTENT_LENGTH": ""}, False),
        ({"CONTENT_LENGTH": "x"}, False),
        ({"CONTENT_LENGTH": str(10**12)}, False),
        ({"HTTP_X_API_KEY": ""}, False),
        ({"HTTP_X_API_KEY": "", "HTTP_AUTHORIZATION": "Bearer t"}, True),
        ({"HTTP_ORIGIN": "https://a.example"}, False),
        ({"HTTP_X_LOG_STREAM": "true"}, False),
    ],
)
def test_eligibility_is_decided_from_the_environ(environ: dict[str, str], taken: bool) -> None:
    base = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "20",
        "HTTP_X_API_KEY": "sk_live_x.y",
        "wsgi.url_scheme": "http",
    }
    assert eligible({**base, **environ}) is taken


def test_a_plain_http_request_goes_to_the_full_stack_when_https_is_enforced(settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.TRUSTED_PROXY_COUNT = 1
    base = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": PATH,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "20",
        "HTTP_X_API_KEY": "sk_live_x.y",
        "wsgi.url_scheme": "http",
        "REMOTE_ADDR": "127.0.0.1",
    }
    assert not eligible(base)
    assert eligible({**base, "HTTP_X_FORWARDED_PROTO": "https"})
    # "https" from a peer that is no trusted proxy is the client's word: redirected in full.
    assert not eligible({**base, "HTTP_X_FORWARDED_PROTO": "https", "REMOTE_ADDR": "192.0.2.1"})
