"""The metrics kind: per-process recorders, one sampler a second, staff-only reading."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import User
from django.test import AsyncClient, Client

from streaming import metrics
from streaming.eventlog import get_log

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "redis" and not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (PostgreSQL + Redis pass)")
    url = settings.REDIS_URL if request.param == "redis" else None
    return metrics.Buckets(url, f"{settings.REDIS_KEY_PREFIX}:m{uuid.uuid4().hex[:8]}")


def test_quantiles_interpolate_within_buckets_like_prometheus():
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert metrics.quantile(0.5, buckets) == pytest.approx(0.01)
    assert metrics.quantile(0.7, buckets) == pytest.approx(0.055)
    assert metrics.quantile(0.95, buckets) == pytest.approx(0.55)
    assert metrics.quantile(0.5, {}) is None


def test_each_process_adds_its_change_of_each_second(store):
    figures = [{"requests": 10.0, "latency_le:0.01": 10.0, "latency_le:inf": 10.0}]
    processes = [metrics.Recorder(store, read=lambda: dict(figures[0])) for _ in range(2)]
    figures[0] = {"requests": 25.0, "latency_le:0.01": 20.0, "latency_le:inf": 25.0}
    for recorder in processes:
        recorder.flush(1000)
    got = store.get(1000)
    assert got["requests"] == 30  # (25 - 10) from each of two processes
    processes[0].flush(1001)  # nothing new
    assert store.get(1001) == {}


def test_the_sampler_appends_one_sample_a_second_and_only_the_leader_does(store):
    store.add(2000, {"requests": 12, "latency_le:0.005": 6, "latency_le:0.05": 12})
    store.add(2000, {"latency_le:inf": 12, "batches": 2, "batch_sum": 9})
    leader_key = f"{settings.REDIS_KEY_PREFIX}:leader{uuid.uuid4().hex[:6]}"
    first = metrics.Sampler(store, leader_key=leader_key)
    second = metrics.Sampler(store, leader_key=leader_key)
    event_id = first.tick(2000)
    assert event_id
    if store.redis is not None:
        assert second.tick(2000) is None  # another process leads
    data = next(e.data for e in get_log().read(metrics.STREAM, count=10_000) if e.id == event_id)
    assert data["t"] == 2000 and data["requests_per_s"] == 12
    assert data["latency_ms"]["p50"] == pytest.approx(5.0)
    assert data["batch_size_mean"] == 4.5
    assert set(data["queue_depth"]) >= {"celery", "jobs"}
    assert "in_flight" in data and "active_streams" in data
    assert get_log().meta(metrics.STREAM).tenant_id == 0


@pytest.fixture
def staff_client():
    User.objects.create_user("ops", password="pw-12345-long", is_staff=True)
    client = Client()
    client.login(username="ops", password="pw-12345-long")
    return client


def _sse_status(stream: str, *, cookies=None, headers=None) -> tuple[int, str]:
    async def run():
        client = AsyncClient()
        if cookies:
            client.cookies = cookies
        response = await client.get(f"/v1/streams/{stream}/events", headers=headers or {})
        if response.status_code != 200:
            return response.status_code, ""
        text = ""
        async for chunk in response.streaming_content:
            text += chunk.decode()
            if "event: metric" in text:
                break
        return 200, text

    return async_to_sync(run)()


def test_staff_follow_the_metrics_stream_and_tenants_cannot(staff_client, key, store):
    metrics.Sampler(store, leader_key=f"x{uuid.uuid4().hex}").tick(3000)
    status, text = _sse_status(metrics.STREAM, cookies=staff_client.cookies)
    assert status == 200 and '"requests_per_s"' in text
    assert _sse_status(metrics.STREAM, headers={"X-API-Key": key[1]})[0] == 404
    assert _sse_status(metrics.STREAM)[0] == 401


def test_the_dashboard_is_staff_only_and_linked_from_the_admin(staff_client, key):
    page = staff_client.get("/admin/metrics/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "/v1/streams/platform.metrics/events" in body
    assert "streaming/dashboard.js" in body and "<canvas" in body
    assert "/admin/metrics/" in staff_client.get("/admin/").content.decode()
    anonymous = Client().get("/admin/metrics/")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    assert Client().get("/admin/metrics/", HTTP_X_API_KEY=key[1]).status_code == 302


def test_staff_follow_the_metrics_stream_over_websocket_with_their_session(
    staff_client, key, store
):
    from channels.testing import WebsocketCommunicator

    from config.asgi import application

    event_id = metrics.Sampler(store, leader_key=f"x{uuid.uuid4().hex}").tick(4000)
    session = staff_client.cookies[settings.SESSION_COOKIE_NAME].value
    path = f"/ws/v1/streams/{metrics.STREAM}"

    async def run():
        ws = WebsocketCommunicator(
            application,
            path,
            headers=[
                (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()),
                (b"origin", b"http://localhost"),
            ],
        )
        assert (await ws.connect())[0]
        assert await ws.receive_json_from(timeout=5) == {"type": "ready", "stream": metrics.STREAM}
        await ws.send_json_to({"type": "subscribe", "after": None})
        while True:
            message = await ws.receive_json_from(timeout=5)
            if message.get("id") == event_id:
                break
        await ws.disconnect()
        tenant = WebsocketCommunicator(application, path, headers=[(b"x-api-key", key[1].encode())])
        await tenant.connect()
        out = await tenant.receive_output(timeout=5)
        assert out == {"type": "websocket.close", "code": 4404}

    async_to_sync(run)()
