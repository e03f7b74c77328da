"""Hostile input to inference never reaches a 5xx: a body nested 50,000 deep through the full
stack and the unary front door, a stream request whose body is not an object, a pinned version
the model does not serve, unstorable strings in a media request's ``model``, a malformed
multipart upload, and over WebSocket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import AsyncClient
from rest_framework.test import APIClient

from config.asgi import application as asgi_application
from inference.api.frontdoor import FrontDoor
from inference.catalog import selectors
from inference.media.tests.samples import wav
from inference.models import ModelVersion
from inference.tests.conftest import lane_queue, make_version
from inference.tests.test_frontdoor import Counting, call

DEEP = b'{"input": ' + b"[" * 50_000 + b"}"


def malformed(status: int, body: Any) -> None:
    assert status == 400, body
    assert body["type"] == "urn:sluice:problem:malformed-request"
    assert "API_JSON_MAX_DEPTH" in body["detail"]


@pytest.mark.django_db
def test_a_body_nested_50000_deep_is_a_malformed_request(
    api: APIClient, doubler: ModelVersion
) -> None:
    response = api.post("/v1/models/doubler/infer", DEEP, content_type="application/json")
    malformed(response.status_code, response.json())
    streamed = api.post(
        "/v1/models/doubler/infer?stream=true", DEEP, content_type="application/json"
    )
    malformed(streamed.status_code, streamed.json())


@pytest.mark.django_db
@pytest.mark.parametrize("body", [b"5", b"null", b'"text"', b"[1]"])
def test_a_stream_request_whose_body_is_no_object_is_a_422(
    api: APIClient, doubler: ModelVersion, body: bytes
) -> None:
    path = "/v1/models/doubler/infer?stream=true"
    answer = api.post(path, body, content_type="application/json")
    assert answer.status_code == 422, answer.content
    assert answer.json()["type"] == "urn:sluice:problem:validation-error"


@pytest.mark.django_db
def test_pinning_a_version_the_model_does_not_serve_is_a_422_naming_it(
    api: APIClient, doubler: ModelVersion
) -> None:
    for path, body in (
        ("/v1/models/doubler/infer", {"input": {"x": 1}, "version": "7"}),
        ("/v1/models/doubler/infer?stream=true", {"input": {"x": 1}, "version": "7"}),
        ("/v1/jobs", {"model": "doubler", "inputs": [{"x": 1}], "version": "7"}),
    ):
        response = api.post(path, body, format="json")
        assert response.status_code == 422, (path, response.content)
        assert response.json()["errors"] == [
            {
                "field": "version",
                "detail": "doubler has no active version 7.",
                "code": "invalid",
            }
        ]


@pytest.mark.skipif(not settings.REDIS_URL, reason="the front door's batches travel on Redis")
@pytest.mark.django_db(transaction=True)
def test_the_front_door_hands_a_body_it_will_not_parse_to_the_full_stack(
    lanes: Any, key: Any, settings: Any
) -> None:
    queue = lane_queue()
    settings.INFERENCE_QUEUES = [*settings.INFERENCE_QUEUES, queue]
    make_version(queue=queue, max_batch_size=8, max_delay_ms=0)
    lanes(queue).start()
    full = Counting()
    app = FrontDoor(full)
    try:
        selectors.routing_table("doubler")  # the front door's own copy: it would serve it
        path = "/v1/models/doubler/infer"
        status, _, body = call(app, None, {"X-API-Key": key[1]}, path, raw=DEEP)
        malformed(status, body)
        assert full.handed == 1
    finally:
        app.close()


# --- media ---------------------------------------------------------------------------------------


def media(method: str, path: str, raw_key: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async def go() -> Any:
        response = await getattr(AsyncClient(), method)(
            path, headers={"X-API-Key": raw_key}, **kwargs
        )
        return response.status_code, json.loads(response.content)

    return async_to_sync(go)()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "code"),
    [("a\x00b", "null_characters_not_allowed"), ("\ud800", "surrogate_characters_not_allowed")],
)
def test_an_unstorable_media_model_name_is_a_422(key: Any, model: str, code: str) -> None:
    body = json.dumps({"text": "Hello.", "model": model})
    status, problem = media(
        "post", "/v1/media/translations", key[1], data=body, content_type="application/json"
    )
    assert status == 422, problem
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [("model", code)]
    status, problem = media(
        "post",
        "/v1/media/transcriptions?model=a%00b",
        key[1],
        data=wav(b"\x00\x00" * 1600),
        content_type="audio/wav",
    )
    assert status == 422 and problem["errors"][0]["field"] == "model", problem


@pytest.mark.django_db
def test_a_media_body_nested_50000_deep_is_a_malformed_request(key: Any) -> None:
    body = b'{"text": ' + b"[" * 50_000 + b"}"
    status, problem = media(
        "post", "/v1/media/speech", key[1], data=body, content_type="application/json"
    )
    malformed(status, problem)


@pytest.mark.django_db
def test_a_multipart_upload_without_a_boundary_is_a_malformed_request(key: Any) -> None:
    status, problem = media(
        "post",
        "/v1/media/transcriptions",
        key[1],
        data=b"--x\r\n",
        content_type="multipart/form-data",
    )
    assert status == 400, problem
    assert problem["type"] == "urn:sluice:problem:malformed-request"


# --- WebSocket -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_websocket_frame_the_policy_refuses_is_a_bad_message(
    key: Any, doubler: ModelVersion
) -> None:
    async def go() -> list[dict[str, Any]]:
        socket = WebsocketCommunicator(
            asgi_application,
            "/ws/v1/models/doubler/infer",
            headers=[(b"x-api-key", key[1].encode())],
        )
        await socket.connect()
        assert (await socket.receive_json_from(timeout=5))["type"] == "ready"
        answers = []
        for frame in ("[" * 50_000, '{"type": "infer", "input": {"x": "\\u0000"}}'):
            await socket.send_to(text_data=frame)
            answers.append(await socket.receive_json_from(timeout=5))
        await socket.disconnect()
        return answers

    answers = async_to_sync(go)()
    assert [a["code"] for a in answers] == ["bad_message", "bad_message"], answers
    assert "API_JSON_MAX_DEPTH" in answers[0]["message"]
    assert "input.x" in answers[1]["message"]
