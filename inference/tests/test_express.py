"""The express lane (inference/express.py) answers exactly as the full stack would, and hands
over everything it should not answer itself."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections, connections
from django.test import RequestFactory
from sklearn.datasets import load_digits

from inference import backpressure, dispatch, express
from inference.tests.conftest import make_version
from tenants.tests.factories import TenantFactory, make_key

pytestmark = pytest.mark.django_db

PATH = "/v1/models/digits/infer"
# What may differ between two answers to the same request: ids, timings, the batch it joined.
VOLATILE = {"id", "latency_ms", "batch_size"}
COMPARED_HEADERS = (
    "Content-Type",
    "X-Sluice-Version",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "Retry-After",
    "WWW-Authenticate",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
    "Vary",
    "Allow",
    "Access-Control-Allow-Origin",
)


class Answer:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_code = int(status.split()[0])
        self.headers = {name.lower(): value for name, value in headers}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def comparable(self) -> tuple[int, dict[str, str | None], Any]:
        body = self.json()
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in VOLATILE}
            if "detail" in body:  # DRF's "Expected available in N seconds.": clock-dependent
                body["detail"] = re.sub(
                    r" Expected available in \d+ seconds?\.$", "", body["detail"]
                )
        # The remaining count is the same only when both sides start from the same count.
        headers = {h: self.header(h) for h in COMPARED_HEADERS if h != "RateLimit-Remaining"}
        if headers["Retry-After"] is not None:
            headers["Retry-After"] = "present"  # seconds left in the window: clock-dependent
        return self.status_code, headers, body


class Stack:
    """The project's WSGI application (lane in front of the full handler) and the full handler
    alone, called in process; ``handed_over`` counts what the lane passed to the full one."""

    def __init__(self) -> None:
        self.full = WSGIHandler()
        self.handed_over = 0
        real = self.full.get_response

        def counted(request: Any) -> Any:
            self.handed_over += 1
            return real(request)

        self.lane_full = WSGIHandler()
        self.lane_full.get_response = counted  # type: ignore[method-assign]
        self.lane = express.lane(self.lane_full)

    def post(
        self,
        app: Callable[..., Any],
        path: str = PATH,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        **headers: str,
    ) -> Answer:
        data = raw if raw is not None else json.dumps(body).encode()
        environ = RequestFactory().post(path, data, content_type=content_type, **headers).environ
        started: list[Any] = []

        def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
            started.extend((status, response_headers))

        # As Django's test client: the handlers' request signals must not close the test's
        # database connection (it holds the test's transaction).
        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        try:
            result = app(environ, start_response)
            try:
                content = b"".join(result)
            finally:
                result.close()
        finally:
            signals.request_started.connect(close_old_connections)
            signals.request_finished.connect(close_old_connections)
        return Answer(started[0], started[1], content)

    def both(self, *args: Any, **kwargs: Any) -> tuple[Answer, Answer]:
        return self.post(self.lane, *args, **kwargs), self.post(self.full, *args, **kwargs)


@pytest.fixture
def stack() -> Stack:
    return Stack()


@pytest.fixture
def raw_key(key: Any) -> str:
    return str(key[1])


def _input(n: int = 0) -> dict[str, Any]:
    return {"input": {"pixels": load_digits().data[n].tolist()}}


def test_it_serves_a_well_formed_request_itself_with_the_full_stacks_answer(
    stack, digits, raw_key, eager
):
    lane, full = stack.both(body=_input(3), HTTP_X_API_KEY=raw_key)
    assert stack.handed_over == 0
    assert lane.status_code == 200
    assert lane.json()["output"]["label"] == load_digits().target[3]
    assert lane.comparable() == full.comparable()
    assert lane.header("X-Request-ID")
    assert lane.header("RateLimit-Limit") is not None


def test_it_keeps_a_sane_incoming_request_id(stack, digits, raw_key, eager):
    answer = stack.post(stack.lane, body=_input(), HTTP_X_API_KEY=raw_key, HTTP_X_REQUEST_ID="r-1")
    assert stack.handed_over == 0 and answer.header("X-Request-ID") == "r-1"


def test_it_answers_the_versions_schema_errors_as_the_full_stack(stack, digits, raw_key):
    body = {"input": {"pixels": [1, 2]}}  # well-formed for the lane, wrong for the version
    lane, full = stack.both(body=body, HTTP_X_API_KEY=raw_key)
    assert stack.handed_over == 0
    assert lane.status_code == 422 and lane.header("Content-Type") == "application/problem+json"
    assert [e["field"] for e in lane.json()["errors"]] == ["input.pixels"]
    assert lane.comparable() == full.comparable()


@pytest.mark.parametrize(
    ("case", "request_kwargs"),
    [
        ("malformed body", {"body": {"inputs": 1}}),
        ("not JSON", {"raw": b"{not json"}),
        ("NaN is not JSON", {"raw": b'{"input": {"pixels": NaN}}'}),
        ("bad version field", {"body": {**_input(), "version": 7}}),
        ("form body", {"raw": b"input=1", "content_type": "application/x-www-form-urlencoded"}),
        ("unknown model", {"path": "/v1/models/nope/infer", "body": _input()}),
        ("wrong key", {"body": _input(), "HTTP_X_API_KEY": "sk_live_nope.nope"}),
        ("no key", {"body": _input(), "HTTP_X_API_KEY": ""}),
        ("a browser's request", {"body": _input(), "HTTP_ORIGIN": "https://app.example"}),
        ("a streaming request", {"path": PATH + "?stream=true", "body": {"input": {}}}),
        ("an analysis stream", {"path": PATH + "?stream=true", "body": {"inputs": [{}]}}),
    ],
)
def test_it_hands_over_what_it_should_not_answer_with_the_same_result(
    stack, digits, raw_key, settings, eager, case, request_kwargs
):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example"]
    kwargs = {"HTTP_X_API_KEY": raw_key, **request_kwargs}
    if not kwargs["HTTP_X_API_KEY"]:
        del kwargs["HTTP_X_API_KEY"]
    lane, full = stack.both(**kwargs)
    assert lane.status_code != 200 or case in ("a browser's request", "a streaming request")
    assert lane.status_code == full.status_code, case
    if lane.header("Content-Type") == "application/json" and lane.status_code == 200:
        assert lane.json()["output"] == full.json()["output"]
    elif "event-stream" not in str(lane.header("Content-Type")):
        assert lane.comparable() == full.comparable(), case


def test_it_hands_over_a_key_without_the_infer_scope_and_a_model_the_plan_forbids(
    stack, digits, tenant
):
    no_scope = make_key(tenant, scopes=["jobs"])[1]
    lane, full = stack.both(body=_input(), HTTP_X_API_KEY=no_scope)
    assert lane.status_code == 403 and lane.comparable() == full.comparable()
    tenant.allowed_models = ["something-else"]
    tenant.save()
    allowed = make_key(tenant)[1]
    lane, full = stack.both(body=_input(), HTTP_X_API_KEY=allowed)
    assert lane.status_code == 404 and lane.comparable() == full.comparable()
    assert stack.handed_over == 2


def _refused_third(
    stack: Stack, app: Callable[..., Any], key: str, ip: str
) -> tuple[list[int], Answer]:
    answers = [stack.post(app, body=_input(), HTTP_X_API_KEY=key, REMOTE_ADDR=ip) for _ in range(3)]
    return [a.status_code for a in answers], answers[-1]


def test_it_counts_the_per_ip_limit_as_the_middleware_does(stack, digits, raw_key, settings, eager):
    settings.RATELIMIT_IP_RATE = "2/h"
    lane_codes, lane = _refused_third(stack, stack.lane, raw_key, "10.1.0.1")
    full_codes, full = _refused_third(stack, stack.full, raw_key, "10.1.0.2")
    assert lane_codes == full_codes == [200, 200, 429]
    assert stack.handed_over == 0
    assert lane.json()["type"] == "urn:sluice:problem:rate-limited"
    assert lane.header("RateLimit-Remaining") == "0"
    # The middleware's refusal skips the later middleware and the view: no frame options,
    # Allow or Vary: Accept there. The body and the limit headers are the same.
    assert lane.json() == full.json()
    for name in ("Content-Type", "RateLimit-Limit", "RateLimit-Remaining"):
        assert lane.header(name) == full.header(name)
    assert int(str(lane.header("Retry-After"))) > 0


@pytest.mark.parametrize(
    ("plan", "refusal"),
    [
        ({"requests_per_minute": 2}, ("detail", "Tenant limit of 2/min.")),
        ({"monthly_request_quota": 2}, ("type", "urn:sluice:problem:quota-exceeded")),
    ],
    ids=["tenant-limit", "monthly-quota"],
)
def test_it_counts_the_tenants_plan_as_the_throttle_does(
    stack, digits, settings, eager, plan, refusal
):
    settings.RATELIMIT_IP_RATE = "1000/h"
    keys = []
    for side in ("lane", "full"):
        slug = f"{side}-{next(iter(plan))}".replace("_", "-")
        keys.append(make_key(TenantFactory(slug=slug, name=slug, **plan))[1])
    lane_codes, lane = _refused_third(stack, stack.lane, keys[0], "10.2.0.1")
    full_codes, full = _refused_third(stack, stack.full, keys[1], "10.2.0.2")
    assert lane_codes == full_codes == [200, 200, 429]
    field, expected = refusal
    assert lane.json()[field].startswith(expected)
    assert lane.comparable() == full.comparable()


@pytest.mark.usefixtures("worker_everywhere")
def test_it_answers_a_full_queue_and_a_missed_deadline_as_the_full_stack(
    stack, raw_key, settings, monkeypatch
):
    queue = f"q{time.time_ns()}"  # this test's own queue (the Redis pass shares the server)
    settings.INFERENCE_QUEUES = ["cpu", queue]
    make_version(queue=queue)
    settings.INFERENCE_QUEUE_BOUND = 1
    path = "/v1/models/doubler/infer"
    backpressure.admit(queue, "someone-else", time.time() + 30)
    try:
        lane, full = stack.both(path, {"input": {"x": 1}}, HTTP_X_API_KEY=raw_key)
    finally:
        backpressure.release(queue, "someone-else")
    assert lane.status_code == 503 and lane.json()["type"] == "urn:sluice:problem:queue-full"
    assert lane.comparable() == full.comparable()
    monkeypatch.setattr(dispatch, "batch_wire", lambda *args: None)  # via enqueue_batch
    monkeypatch.setattr(dispatch, "enqueue_batch", lambda **kw: None)  # nobody answers
    body = {"input": {"x": 2}, "timeout_ms": 100}
    lane, full = stack.both(path, body, HTTP_X_API_KEY=raw_key)
    assert lane.status_code == 504 and lane.comparable() == full.comparable()
    assert stack.handed_over == 0
    assert backpressure.in_flight(queue) == 0


STREAM_HEADERS = (
    "Content-Type",
    "Cache-Control",
    "X-Accel-Buffering",
    "X-Sluice-Version",
    "X-Sluice-Stream-Kind",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "Referrer-Policy",
    "Vary",
    "Allow",
    "RateLimit-Limit",
)


def _events(answer: Answer) -> list[tuple[str, Any]]:
    """The SSE body's events as (event, data), without ids and timings."""
    out = []
    for frame in answer.body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "event" in fields:
            data = json.loads(fields["data"])
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k not in ("ms", "stopped_at")}
            out.append((fields["event"], data))
    return out


def test_it_serves_a_streaming_request_with_the_full_stacks_answer(stack, digits, raw_key, eager):
    lane, full = stack.both(PATH + "?stream=true", _input(5), HTTP_X_API_KEY=raw_key)
    assert stack.handed_over == 0
    assert lane.status_code == full.status_code == 200
    assert {h: lane.header(h) for h in STREAM_HEADERS} == {
        h: full.header(h) for h in STREAM_HEADERS
    }
    assert lane.header("Content-Type") == "text/event-stream"
    assert lane.header("X-Sluice-Stream") != full.header("X-Sluice-Stream")  # two streams
    assert lane.header("X-Request-ID")
    events = _events(lane)
    assert events == _events(full)
    assert [name for name, _ in events] == ["result", "end"]
    assert events[0][1]["output"]["label"] == load_digits().target[5]


def test_it_refuses_a_stream_as_the_full_stack(stack, digits, raw_key, tenant, settings, eager):
    tenant.concurrent_streams = 0  # every stream slot in use
    tenant.save()
    lane, full = stack.both(PATH + "?stream=true", _input(), HTTP_X_API_KEY=raw_key)
    assert lane.status_code == 429 and lane.json()["type"].endswith("too-many-streams")
    assert lane.comparable() == full.comparable()
    tenant.concurrent_streams = 5
    tenant.save()
    settings.RATELIMIT_IP_RATE = "1/h"  # the second request of each side is over the limit
    answers = {}
    for side, app in (("lane", stack.lane), ("full", stack.full)):
        ip = f"10.3.0.{len(answers) + 1}"
        for _ in range(2):
            answers[side] = stack.post(
                app, PATH + "?stream=true", _input(), HTTP_X_API_KEY=raw_key, REMOTE_ADDR=ip
            )
    assert answers["lane"].status_code == answers["full"].status_code == 429
    assert answers["lane"].json() == answers["full"].json()
    settings.RATELIMIT_IP_RATE = "1000/h"
    bad = {"input": {"pixels": [1]}}  # the version's schema refuses it: 422, no stream
    lane, full = stack.both(PATH + "?stream=true", bad, HTTP_X_API_KEY=raw_key)
    assert lane.status_code == 422 and lane.comparable() == full.comparable()
    assert stack.handed_over == 0


def test_it_is_the_wsgi_application_unless_turned_off(settings):
    import importlib

    import config.wsgi

    assert settings.INFERENCE_EXPRESS_LANE
    # Inside the overload bound and the body limit (config.overload, config.bodylimit).
    assert config.wsgi.application.app.app.__qualname__ == "lane.<locals>.application"
    settings.INFERENCE_EXPRESS_LANE = False
    try:
        assert isinstance(importlib.reload(config.wsgi).application.app.app, WSGIHandler)
    finally:
        settings.INFERENCE_EXPRESS_LANE = True
        importlib.reload(config.wsgi)


@pytest.mark.parametrize(
    ("environ", "eligible"),
    [
        ({}, True),
        ({"REQUEST_METHOD": "GET"}, False),
        ({"QUERY_STRING": "stream=true"}, True),
        ({"QUERY_STRING": "stream=True"}, True),
        ({"QUERY_STRING": "stream=1"}, True),
        ({"QUERY_STRING": "stream=false"}, False),
        ({"QUERY_STRING": "stream=true&x=1"}, False),
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
def test_eligibility_is_decided_from_the_environ(environ, eligible):
    base = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "20",
        "HTTP_X_API_KEY": "sk_live_x.y",
        "wsgi.url_scheme": "http",
    }
    assert express.eligible({**base, **environ}) is eligible


def test_a_plain_http_request_goes_to_the_full_stack_when_https_is_enforced(settings):
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
    assert not express.eligible(base)
    assert express.eligible({**base, "HTTP_X_FORWARDED_PROTO": "https"})
    # "https" from a peer that is no trusted proxy is the client's word: redirected in full.
    assert not express.eligible(
        {**base, "HTTP_X_FORWARDED_PROTO": "https", "REMOTE_ADDR": "192.0.2.1"}
    )


@pytest.mark.django_db(transaction=True)  # the request threads must see the tenant and key
def test_concurrent_requests_are_counted_exactly_against_the_plan(stack, digits, settings, eager):
    """On Redis the lane counts a web-side batch's limits in one round trip; whatever the
    batches, exactly the plan's number of requests pass."""
    from django.conf import settings as django_settings

    if not django_settings.REDIS_URL:
        # Per request there; and twelve threads on one in-memory SQLite database sometimes
        # meet a "database table is locked" in the eager worker half.
        pytest.skip("batch counting is the Redis configuration's (PostgreSQL + Redis pass)")
    from concurrent.futures import ThreadPoolExecutor

    settings.RATELIMIT_IP_RATE = "1000/h"
    tenant = TenantFactory(slug="busy", name="Busy", requests_per_minute=5)
    raw = make_key(tenant)[1]

    def one(n: int) -> Answer:
        try:
            return stack.post(stack.lane, body=_input(n), HTTP_X_API_KEY=raw)
        finally:
            connections.close_all()  # this thread's connection: the test database is dropped

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(one, range(12)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 5 + [429] * 7
    assert stack.handed_over == 0
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.json()["detail"].startswith("Tenant limit of 5/min.") for a in refused)
    assert all(a.header("RateLimit-Remaining") == "0" for a in refused)


def test_a_request_refused_before_its_batch_is_still_counted(stack, digits, raw_key, settings):
    settings.RATELIMIT_IP_RATE = "2/h"
    bad = {"input": {"pixels": [1, 2]}}  # the version's schema refuses it before any batch
    codes = [
        stack.post(stack.lane, body=bad, HTTP_X_API_KEY=raw_key, REMOTE_ADDR="10.4.0.1")
        for _ in range(3)
    ]
    assert [a.status_code for a in codes] == [422, 422, 429]
    assert codes[0].header("RateLimit-Limit") == "2"
