"""Streaming inference in process: ``?stream=true`` over SSE (tokens, per-item results),
validation, stream slots, failures, and cooperative cancellation in the producer."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from django.core.signals import request_finished
from django.db import close_old_connections

from inference.catalog import selectors
from inference.models import Model, ModelVersion
from inference.registry.builtin import TEXTGEN_SCHEMA
from inference.registry.services import version_register
from inference.tests.conftest import make_version
from inference.tests.fakes import BROKEN
from inference.transport import streams
from inference.worker import predict
from streaming import services as stream_slots
from streaming.eventlog import get_log

pytestmark = pytest.mark.django_db


def sse_events(response) -> list[tuple[str, dict]]:
    """(event, data) pairs of a finished SSE response (a test-client streaming response)."""
    text = b"".join(response.streaming_content).decode()
    out = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def server_close(response) -> None:
    """What a server does with a response it stops sending; without Django's connection
    cleanup, which would close the test's own database connection (the test client does the
    same around the closes it makes itself)."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> bytes:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from testing.tinylm import build_gpt2, zipped

    return zipped(build_gpt2(Path(tmp_path_factory.mktemp("lm")), eos=False, n_positions=1024))


def make_lm(artifact: bytes, name: str = "lm") -> ModelVersion:
    row = version_register(
        model_name=name,
        version="1",
        runtime=ModelVersion.Runtime.TRANSFORMERS,
        artifact=artifact,
        artifact_filename="lm.zip",
        input_schema={
            **TEXTGEN_SCHEMA,
            "properties": {
                **TEXTGEN_SCHEMA["properties"],
                "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1000},
            },
        },
        task=Model.Task.TEXT,
        actor="test",
    )
    row.activate(actor="test")
    return row


def test_a_text_model_streams_tokens_then_the_result(api, tiny_lm, eager) -> None:
    make_lm(tiny_lm)
    response = api.post(
        "/v1/models/lm/infer?stream=true",
        {"input": {"prompt": "Hello world", "max_tokens": 12}},
        format="json",
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["X-Accel-Buffering"] == "no"
    assert response["X-Sluice-Stream-Kind"] == "text" and response["X-Sluice-Version"] == "1"
    events = sse_events(response)
    names = [e for e, _ in events]
    assert names[-2:] == ["result", "end"] and set(names[:-2]) == {"token"}
    result = events[-2][1]["output"]
    assert result["completion_tokens"] == 12 and result["finish_reason"] == "length"
    assert "".join(d["text"] for e, d in events if e == "token") == result["text"]
    assert events[-1][1]["reason"] == "done" and events[-1][1]["version"] == "1"
    assert get_log().meta(response["X-Sluice-Stream"]).kind == "text"


def test_an_analysis_streams_one_result_per_item(api, eager) -> None:
    make_version(max_batch_size=2)
    response = api.post(
        "/v1/models/doubler/infer?stream=true",
        {"inputs": [{"x": n} for n in range(5)]},
        format="json",
    )
    assert response.status_code == 200 and response["X-Sluice-Stream-Kind"] == "analysis"
    events = sse_events(response)
    results = [d for e, d in events if e == "result"]
    assert [(r["index"], r["output"]["y"]) for r in results] == [(n, 2 * n) for n in range(5)]
    assert events[-1] == ("end", events[-1][1]) and events[-1][1]["events"] == 5


def test_a_single_input_of_another_task_streams_its_result(api, eager) -> None:
    make_version()
    events = sse_events(
        api.post("/v1/models/doubler/infer?stream=true", {"input": {"x": 4}}, format="json")
    )
    assert events[0] == ("result", {"index": 0, "output": {"y": 8}})
    assert events[-1][0] == "end"


def test_bad_input_is_refused_before_any_event(api, eager) -> None:
    make_version()
    response = api.post(
        "/v1/models/doubler/infer?stream=true",
        {"inputs": [{"x": 1}, {"x": -1}]},
        format="json",
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["inputs[1].x"]
    both = api.post(
        "/v1/models/doubler/infer?stream=true",
        {"input": {"x": 1}, "inputs": [{"x": 1}]},
        format="json",
    )
    assert both.status_code == 422


def test_a_tenant_with_every_stream_slot_in_use_gets_429(api, tenant, eager) -> None:
    make_version()
    tenant.concurrent_streams = 1
    tenant.save()
    held = stream_slots.stream_slot_take(tenant)
    assert held
    response = api.post("/v1/models/doubler/infer?stream=true", {"input": {"x": 1}}, format="json")
    assert response.status_code == 429
    assert response.json()["type"].endswith("too-many-streams")
    stream_slots.stream_slot_release(held)
    ok = api.post("/v1/models/doubler/infer?stream=true", {"input": {"x": 1}}, format="json")
    assert ok.status_code == 200
    sse_events(ok)  # reading to the end gives the slot back
    assert stream_slots.stream_slot_take(tenant)


def test_a_failing_model_ends_the_stream_with_an_error(api, eager) -> None:
    make_version("broken", options=BROKEN)
    events = sse_events(
        api.post("/v1/models/broken/infer?stream=true", {"input": {"x": 1}}, format="json")
    )
    assert events[0][0] == "error" and events[0][1]["code"] == "inference_failed"
    assert events[-1] == ("end", {"reason": "error"})


@pytest.mark.usefixtures("worker_everywhere")
def test_a_client_that_goes_away_cancels_the_stream(api) -> None:
    make_version()  # not eager: nothing consumes the task, the stream stays open
    response = api.post("/v1/models/doubler/infer?stream=true", {"input": {"x": 1}}, format="json")
    stream_id = response["X-Sluice-Stream"]
    assert next(iter(response.streaming_content)) == b": connected\n\n"
    assert not get_log().is_cancelled(stream_id)
    server_close(response)  # the server notices the disconnect: the generator is closed
    assert get_log().is_cancelled(stream_id)


@pytest.mark.usefixtures("worker_everywhere")
def test_a_response_dropped_before_its_first_byte_still_cancels_and_frees_the_slot(
    api, tenant
) -> None:
    make_version()
    tenant.concurrent_streams = 1
    tenant.save()
    for _ in range(3):  # each would need the one slot
        response = api.post(
            "/v1/models/doubler/infer?stream=true", {"input": {"x": 1}}, format="json"
        )
        assert response.status_code == 200
        server_close(response)  # never iterated
        assert get_log().is_cancelled(response["X-Sluice-Stream"])


def _start(version: ModelVersion, tenant, item: dict) -> streams.Started:
    return streams.stream_start(model=version.model, tenant=tenant, kind=streams.TEXT, items=[item])


@pytest.mark.usefixtures("worker_everywhere")
def test_a_stream_cancelled_while_queued_is_dropped_on_start(tenant, tiny_lm) -> None:
    version = make_lm(tiny_lm)
    started = _start(version, tenant, {"prompt": "Hi", "max_tokens": 5})
    streams.stream_cancel(started.stream_id)
    streams.stream_run(
        version_id=version.pk,
        kind="text",
        items=[{"prompt": "Hi", "max_tokens": 5}],
        stream_id=started.stream_id,
        deadline=started.deadline,
        queue=version.queue,
    )
    [end] = get_log().read(started.stream_id)
    assert end.event == "end" and end.data["reason"] == "cancelled"


@pytest.mark.usefixtures("worker_everywhere")
def test_cancelling_mid_stream_stops_the_worker_within_a_token(tenant, tiny_lm) -> None:
    version = make_lm(tiny_lm)
    item = {"prompt": "Hello", "max_tokens": 1000}
    started = _start(version, tenant, item)
    stream_log = get_log()
    # Loaded here: the producer thread must not query the test's (transactional) database.
    predict.model_cache().get(predict.version_spec(version.pk))
    producer = threading.Thread(
        target=streams.stream_run,
        kwargs={
            "version_id": version.pk,
            "kind": "text",
            "items": [item],
            "stream_id": started.stream_id,
            "deadline": started.deadline,
            "queue": version.queue,
        },
    )
    producer.start()
    first = stream_log.read(started.stream_id, block_ms=30_000, count=1)
    assert first[0].event == "token"
    cancelled_at = time.time()
    streams.stream_cancel(started.stream_id)
    producer.join(10)
    assert not producer.is_alive()
    events = stream_log.read(started.stream_id, count=2000)
    end = events[-1]
    assert end.event == "end" and end.data["reason"] == "cancelled"
    assert sum(1 for e in events if e.event == "token") < 1000
    assert end.data["stopped_at"] - cancelled_at < 0.25
    assert "result" not in {e.event for e in events}


@pytest.mark.usefixtures("worker_everywhere")
def test_the_deadline_stops_a_long_stream(tenant, tiny_lm) -> None:
    version = make_lm(tiny_lm)
    # Loaded first: a stream that waits for its model's load gets the load allowance on top.
    predict.model_cache().get(selectors.version_spec(version.pk))
    item = {"prompt": "Hello", "max_tokens": 1000}
    started = streams.stream_start(
        model=version.model, tenant=tenant, kind="text", items=[item], timeout_ms=300
    )
    streams.stream_run(
        version_id=version.pk,
        kind="text",
        items=[item],
        stream_id=started.stream_id,
        deadline=started.deadline,
        queue=version.queue,
    )
    events = get_log().read(started.stream_id, count=2000)
    assert [e.event for e in events[-2:]] == ["error", "end"]
    assert events[-2].data["code"] == "timeout"
