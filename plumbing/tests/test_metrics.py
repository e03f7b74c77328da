from __future__ import annotations

import re

import pytest
from django.conf import settings as django_settings

from plumbing.metrics import BATCH_SIZE

pytestmark = pytest.mark.django_db


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(part in match[1] for part in want.split(",")):
            return float(match[2])
    return 0.0


def test_it_counts_requests_by_process_method_and_status(client, api):
    before = client.get("/metrics").content.decode()
    api.get("/v1/tenant")
    client.get("/v1/tenant")
    after = client.get("/metrics")
    assert after["Content-Type"].startswith("text/plain")
    text = after.content.decode()
    for status in ("200", "401"):
        labels = {"process": "web", "method": "GET", "status": status}
        delta = _sample(text, "sluice_http_requests_total", **labels) - _sample(
            before, "sluice_http_requests_total", **labels
        )
        assert delta >= 1
    assert "sluice_http_request_duration_seconds_bucket" in text


def test_it_exports_batch_sizes(client):
    BATCH_SIZE.labels("metrics-test").observe(4)
    text = client.get("/metrics").content.decode()
    assert _sample(text, "sluice_batch_size_count", model="metrics-test") >= 1
    assert _sample(text, "sluice_batch_size_sum", model="metrics-test") >= 4


def test_it_reads_queue_depths_from_the_redis_broker(client):
    if not django_settings.REDIS_URL:
        pytest.skip("needs a Redis broker (PostgreSQL + Redis pass)")
    import redis

    prefix = django_settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"]
    r = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    r.rpush(f"{prefix}jobs", "a", "b", "c")
    try:
        text = client.get("/metrics").content.decode()
        assert _sample(text, "sluice_queue_depth", queue="jobs") == 3
        assert 'sluice_queue_depth{queue="cpu"}' in text
    finally:
        r.delete(f"{prefix}jobs")


def test_a_process_named_at_start_up_labels_its_requests_with_that_name(monkeypatch) -> None:
    """The unary server (config.unary) counts its requests as ``unary``, not as ``asgi``."""
    from prometheus_client import REGISTRY

    from plumbing import metrics

    monkeypatch.setattr(metrics, "_process", None)
    labels = {"process": "unary", "method": "POST", "status": "200"}

    def count() -> float:
        return REGISTRY.get_sample_value("sluice_http_requests_total", labels) or 0.0

    before = count()
    metrics.observe_request(asgi=True, method="POST", status=200, seconds=0.01)
    assert count() == before
    metrics.serve_as("unary")
    metrics.observe_request(asgi=True, method="POST", status=200, seconds=0.01)
    assert count() == before + 1
