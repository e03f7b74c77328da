"""Workers announce the queues they consume; a request whose queue nobody consumes is refused
with 503 ``no-worker`` at once (embedded: the claims of this process; the PostgreSQL + Redis
pass runs the same tests on Redis, and ``inference/tests/test_noworker_e2e.py`` real
processes)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from config.celery import app
from inference.models import Model, ModelVersion
from inference.registry.builtin import DIGITS_SCHEMA
from inference.tests.conftest import make_version
from inference.tests.fakes import DOUBLER
from plumbing import presence

pytestmark = pytest.mark.django_db(transaction=True)


def _queue() -> str:
    return f"q{uuid.uuid4().hex[:10]}"  # a queue of this test only (the Redis pass shares)


def test_it_claims_renews_and_withdraws_a_queue(settings: Any) -> None:
    queue, other = _queue(), _queue()
    presence.announce("w1", [queue])
    presence.announce("w2", [queue, other])
    assert presence.consumers([queue, other]) == {queue: ["w1", "w2"], other: ["w2"]}
    presence.withdraw("w2", [queue, other])
    assert presence.consumers([queue, other]) == {queue: ["w1"], other: []}
    settings.WORKER_PRESENCE_TTL_SECONDS = 0.2
    presence.announce("w1", [queue])  # a worker killed now: its claim lapses on its own
    time.sleep(0.3)
    assert presence.consumers([queue]) == {queue: []}


def test_admission_asks_at_most_once_per_cache_period(settings: Any) -> None:
    settings.WORKER_PRESENCE_CACHE_SECONDS = 0.3
    queue = _queue()
    assert presence.served(queue) is False
    presence.announce("w1", [queue])
    assert presence.served(queue) is False  # still the cached answer
    time.sleep(0.35)
    assert presence.served(queue) is True
    presence.withdraw("w1", [queue])  # withdrawing in this process forgets the answer
    assert presence.served(queue) is False


def test_the_announcer_keeps_its_claims_alive_until_stopped(settings: Any) -> None:
    settings.WORKER_PRESENCE_TTL_SECONDS = 0.4
    settings.WORKER_PRESENCE_INTERVAL_SECONDS = 0.1
    queue = _queue()
    announcer = presence.Announcer("w1", [queue])
    announcer.start()
    try:
        assert presence.served(queue)
        time.sleep(0.6)  # past one TTL: renewed meanwhile
        assert presence.consumers([queue]) == {queue: ["w1"]}
    finally:
        announcer.stop()
    assert presence.consumers([queue]) == {queue: []}
    assert not presence.served(queue)


@pytest.fixture
def queue(settings: Any) -> str:
    """An inference queue of this test only."""
    name = _queue()
    settings.INFERENCE_QUEUES = [*settings.INFERENCE_QUEUES, name]
    return name


def _no_worker(status: int, headers: Any, body: bytes | dict[str, Any], queue: str) -> None:
    assert status == 503, body
    problem = body if isinstance(body, dict) else json.loads(body)
    assert problem["type"] == "urn:sluice:problem:no-worker"
    assert f"No worker is serving queue {queue}" in problem["detail"]
    assert problem["queue"] == queue
    assert headers["Retry-After"] == "1"
    assert headers["Content-Type"] == "application/problem+json"


@pytest.fixture
def doubler_alone(db: None, queue: str) -> ModelVersion:
    return make_version(queue=queue)


@pytest.mark.parametrize(
    "path", ["/v1/models/doubler/infer", "/v1/models/doubler/infer?stream=true"]
)
def test_without_a_worker_a_request_is_refused_at_once(
    api: Any, doubler_alone: ModelVersion, path: str
) -> None:
    api.post(path, {"input": {"x": 1}}, format="json")  # the first one imports the views
    started = time.monotonic()
    response = api.post(path, {"input": {"x": 1}}, format="json")
    assert time.monotonic() - started < 1
    _no_worker(response.status_code, response, response.content, doubler_alone.queue)


def test_without_a_worker_the_protocol_endpoints_are_refused_at_once(api: Any, queue: str) -> None:
    make_version(
        "digits",
        queue=queue,
        options={"handler": "inference.tests.fakes.Doubler"},
        input_schema=DIGITS_SCHEMA,
    )
    v2 = {"inputs": [{"name": "pixels", "shape": [64], "datatype": "FP32", "data": [0.0] * 64}]}
    make_version(
        "letters",
        queue=queue,
        options={"handler": "inference.tests.fakes.LetterEmbedder"},
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
        task=Model.Task.EMBEDDING,
    )
    for path, body in [
        ("/v2/models/digits/infer", v2),
        ("/v1/embeddings", {"model": "letters", "input": "hi"}),
    ]:
        started = time.monotonic()
        response = api.post(path, body, format="json")
        assert time.monotonic() - started < 1
        _no_worker(response.status_code, response, response.content, queue)


def test_without_a_worker_a_media_request_is_refused_at_once(key: tuple, queue: str) -> None:
    version = make_version(
        "speak-en",
        queue=queue,
        options={"handler": "inference.engines.speech.PiperSpeech", "media": "audio"},
        input_schema={"type": "object"},
    )

    async def post() -> Any:
        return await AsyncClient().post(
            "/v1/media/speech",
            data=json.dumps({"text": "Hello."}),
            content_type="application/json",
            headers={"X-API-Key": key[1]},
        )

    response = async_to_sync(post)()
    _no_worker(response.status_code, response, response.content, version.queue)


def test_without_a_worker_a_websocket_inference_gets_the_error_event(
    key: tuple, doubler_alone: ModelVersion
) -> None:
    from config.asgi import application

    async def run() -> dict[str, Any]:
        headers = [(b"x-api-key", key[1].encode())]
        ws = WebsocketCommunicator(application, "/ws/v1/models/doubler/infer", headers=headers)
        await ws.connect()
        assert (await ws.receive_json_from())["type"] == "ready"
        await ws.send_json_to({"type": "infer", "input": {"x": 1}})
        got: dict[str, Any] = await ws.receive_json_from(timeout=1)
        await ws.disconnect()
        return got

    error = async_to_sync(run)()
    assert error["type"] == "error" and error["code"] == "no-worker"
    assert doubler_alone.queue in error["message"] and error["retry_after"] == 1


def test_an_in_process_worker_serves_its_queues_until_it_stops(
    api: Any, settings: Any, queue: str
) -> None:
    """``manage.py serve``'s worker thread: served while it runs, refused once it stops."""
    from plumbing.embedded import start_worker

    if not settings.EMBEDDED:
        pytest.skip("the in-process worker is the embedded default's")
    make_version(queue=queue, options=DOUBLER)
    worker = start_worker(queues=[queue], concurrency=1)
    try:
        deadline = time.monotonic() + 10
        while not presence.consumers([queue])[queue] and time.monotonic() < deadline:
            time.sleep(0.05)
        response = api.post("/v1/models/doubler/infer", {"input": {"x": 4}}, format="json")
        assert response.status_code == 200, response.content
        assert response.json()["output"] == {"y": 8}
    finally:
        worker.stop(in_sighandler=False)
    response = api.post("/v1/models/doubler/infer", {"input": {"x": 4}}, format="json")
    _no_worker(response.status_code, response, response.content, queue)


def test_eager_tasks_need_no_worker(api: Any, doubler_alone: ModelVersion) -> None:
    app.conf.task_always_eager = True
    try:
        response = api.post("/v1/models/doubler/infer", {"input": {"x": 2}}, format="json")
    finally:
        app.conf.task_always_eager = False
    assert response.status_code == 200, response.content
