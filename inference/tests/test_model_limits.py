"""Limits that come from the model are client errors: a text model's context window bounds
``max_tokens`` plus the prompt, answered 422 naming the field on every surface (unary, stream,
OpenAI-compatible, jobs) before the engine runs, and never held against the version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference.models import Model, ModelVersion
from inference.registry.services import version_register
from inference.rules.breaker import CircuitBreaker
from inference.tests.test_streams import sse_events
from jobs import runner, services
from jobs.inputs import from_list
from jobs.models import Task, TaskStatus
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 60  # past 256 tokens


@pytest.fixture(scope="module")
def lm_256(tmp_path_factory: Any) -> bytes:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from testing.tinylm import build_gpt2, zipped

    return zipped(build_gpt2(Path(tmp_path_factory.mktemp("lm256")), eos=False, n_positions=256))


@pytest.fixture
def lm(lm_256: bytes) -> ModelVersion:
    """A text model registered with no schema: Sluice builds it from the model's config."""
    row = version_register(
        model_name="lm",
        version="1",
        runtime=ModelVersion.Runtime.TRANSFORMERS,
        artifact=lm_256,
        artifact_filename="lm.zip",
        task=Model.Task.TEXT,
        actor="test",
    )
    row.activate(actor="test")
    row.refresh_from_db()
    return row


def _fields(response: Any) -> list[str]:
    assert response.status_code == 422, response.content
    return [e["field"] for e in response.json()["errors"]]


def test_the_registered_schema_says_how_many_tokens_the_model_can_answer(lm, api) -> None:
    assert lm.input_schema["properties"]["max_tokens"]["maximum"] == 255
    [version] = api.get("/v1/models/lm").json()["versions"]
    assert version["input_schema"]["properties"]["max_tokens"]["maximum"] == 255


def test_max_tokens_past_the_context_window_is_a_422_for_unary_inference(lm, api, eager) -> None:
    response = api.post(
        "/v1/models/lm/infer", {"input": {"prompt": "Hello", "max_tokens": 300}}, format="json"
    )
    assert _fields(response) == ["input.max_tokens"]
    assert CircuitBreaker().state(lm.pk) == "closed"


def test_a_prompt_that_leaves_no_room_is_a_422_from_the_engines_own_check(lm, api, eager) -> None:
    response = api.post(
        "/v1/models/lm/infer",
        {"input": {"prompt": "Hello world, " * 20, "max_tokens": 200}},  # 120 + 200
        format="json",
    )
    assert _fields(response) == ["input.max_tokens"]
    assert "context window of 256 tokens" in response.json()["errors"][0]["detail"]
    response = api.post("/v1/models/lm/infer", {"input": {"prompt": LONG_PROMPT}}, format="json")
    assert _fields(response) == ["input.prompt"]
    for _ in range(6):  # more than INFERENCE_BREAKER_FAILURES: none counted
        api.post("/v1/models/lm/infer", {"input": {"prompt": LONG_PROMPT}}, format="json")
    assert CircuitBreaker().state(lm.pk) == "closed"
    fine = api.post(
        "/v1/models/lm/infer", {"input": {"prompt": "Hi", "max_tokens": 3}}, format="json"
    )
    assert fine.status_code == 200


def test_a_stream_past_the_context_window_is_refused(lm, api, eager) -> None:
    response = api.post(
        "/v1/models/lm/infer?stream=true",
        {"input": {"prompt": "Hello", "max_tokens": 300}},
        format="json",
    )
    assert _fields(response) == ["input.max_tokens"]
    response = api.post(
        "/v1/models/lm/infer?stream=true", {"input": {"prompt": LONG_PROMPT}}, format="json"
    )
    assert response.status_code == 200  # the worker's check: the stream says it
    events = sse_events(response)
    assert events[0][0] == "error" and events[0][1]["code"] == "invalid_input"
    assert list(events[0][1]["errors"]) == ["prompt"]


def test_openai_completions_past_the_context_window_are_a_422(lm, api, eager) -> None:
    response = api.post(
        "/v1/completions", {"model": "lm", "prompt": "Hello", "max_tokens": 300}, format="json"
    )
    assert _fields(response) == ["input.max_tokens"]
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = api.post(
        "/v1/chat/completions",
        {"model": "lm", "messages": [{"role": "user", "content": LONG_PROMPT}]},
        format="json",
    )
    assert _fields(response) == ["input.prompt"]


def test_a_job_input_past_the_context_window_is_invalid_not_retried(lm, tenant: Tenant) -> None:
    job = services.job_create(
        tenant=tenant,
        request=services.JobRequest(
            model=lm.model,
            version=lm,
            inputs=from_list(
                [
                    {"prompt": "Hello", "max_tokens": 300},
                    {"prompt": LONG_PROMPT},
                    {"prompt": "Hello", "max_tokens": 2},
                ]
            ),
            priority=0,
            chunk_size=3,
            max_attempts=3,
            options={},
        ),
    )
    runner.run_chunk(str(job.pk), 0)
    tasks = list(Task.objects.filter(job=job).order_by("index"))
    assert [t.status for t in tasks] == [TaskStatus.DEAD, TaskStatus.DEAD, TaskStatus.SUCCEEDED]
    assert [t.attempts for t in tasks[:2]] == [1, 1]
    assert "max_tokens" in tasks[0].last_error and "prompt" in tasks[1].last_error
