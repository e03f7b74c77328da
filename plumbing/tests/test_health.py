from __future__ import annotations

import uuid

import pytest

from inference.tests.conftest import make_version
from plumbing import presence

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_dependencies(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.fixture
def workers():
    """A worker on every queue the deployment needs, for as long as the test runs."""
    queues = presence.needed_queues()
    presence.announce("readyz-test", queues)
    yield queues
    presence.withdraw("readyz-test", queues)


def test_readyz_checks_the_database(client, workers):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["without_workers"] == []


# Transactional: the readiness checks close an unusable connection, as they would in production.
@pytest.mark.django_db(transaction=True)
def test_readyz_is_degraded_not_unready_while_a_queue_has_no_worker(client, settings):
    queue = f"q{uuid.uuid4().hex[:10]}"
    settings.INFERENCE_QUEUES = [*settings.INFERENCE_QUEUES, queue]
    make_version(queue=queue)  # a version taking traffic needs a worker on its queue
    presence.announce("readyz-test", ["celery", settings.JOBS_QUEUE])
    try:
        response = client.get("/readyz")
    finally:
        presence.withdraw("readyz-test", ["celery", settings.JOBS_QUEUE])
    assert response.status_code == 200  # this web process still serves: no restart, no drain
    body = response.json()
    assert body["status"] == "degraded", body
    assert body["without_workers"] == [queue]
    assert body["checks"]["workers"]["queues"] == {"celery": 1, settings.JOBS_QUEUE: 1, queue: 0}
    assert client.get("/readyz").json()["without_workers"] == sorted(
        ["celery", settings.JOBS_QUEUE, queue]
    )


def test_readyz_names_redis_and_the_broker_when_they_are_down(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["down"] == ["broker", "redis"]
    assert body["checks"]["database"]["ok"] is True
    assert "Connection" in body["checks"]["redis"]["error"]


@pytest.mark.redis
def test_readyz_is_ready_with_real_redis(client, settings, workers):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (PostgreSQL + Redis pass)")
    body = client.get("/readyz").json()
    assert body["status"] == "ok", body
    assert {"database", "redis", "broker"} <= body["checks"].keys()
