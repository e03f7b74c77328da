"""Remote versions through the serving path: an upstream's failures become the documented
problems (503 model-unavailable, 504 timeout, 502 inference-failed), and a remote version
that cannot work shows as unavailable, with the reason, in the API and the admin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from inference.models import ModelVersion
from inference.registry.services import version_register
from inference.tests.fakes import X_SCHEMA
from inference.tests.upstream_server import FakeUpstream, Reply, fake_upstream
from testing.processes import free_port

pytestmark = pytest.mark.django_db

INFER = "/v2/models/model/infer"


@pytest.fixture(autouse=True)
def _loopback_upstreams(settings: Any) -> None:
    """The fake upstreams listen on 127.0.0.1, which remote runtimes may reach only when told."""
    settings.INFERENCE_REMOTE_ALLOWED_NETWORKS = ["127.0.0.0/8"]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with fake_upstream() as server:
        yield server


def make_version(name: str, *, runtime: str, options: dict) -> ModelVersion:
    row = version_register(
        model_name=name,
        version="1",
        runtime=runtime,
        runtime_options=options,
        input_schema=X_SCHEMA,
        actor="test",
    )
    row.activate(actor="test")
    row.refresh_from_db()
    return row


def _remote(url: str, **options) -> ModelVersion:
    return make_version(
        "remote",
        runtime=ModelVersion.Runtime.KSERVE,
        options={
            "url": url,
            "model": "model",
            "retries": 1,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            **options,
        },
    )


def _infer(api, x: int = 1):
    return api.post("/v1/models/remote/infer", {"input": {"x": x}}, format="json")


def _problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"urn:sluice:problem:{slug}"
    return body


def test_a_remote_version_answers_through_the_api(api, upstream, eager) -> None:
    _remote(upstream.url)
    response = _infer(api, 21)
    assert response.status_code == 200, response.content
    assert response.json()["output"] == {"y": 42}
    assert response.json()["version"] == "1"


def test_an_unreachable_upstream_is_a_503_model_unavailable(api, eager) -> None:
    _remote(f"http://127.0.0.1:{free_port()}")
    body = _problem(_infer(api), 503, "model-unavailable")
    assert "unreachable" in body["detail"]
    assert "127.0.0.1" not in body["detail"]


def test_an_overloaded_upstream_passes_its_retry_after_on(api, upstream, eager) -> None:
    _remote(upstream.url, retries=0)
    upstream.plan(INFER, Reply(503, {"error": "model loading"}, headers={"Retry-After": "7"}))
    response = _infer(api)
    body = _problem(response, 503, "model-unavailable")
    assert body["detail"].endswith("answered 503")  # the upstream's own words are logged only
    assert response["Retry-After"] == "7"


def test_an_upstream_past_its_read_timeout_is_a_504(api, upstream, eager) -> None:
    _remote(upstream.url, read_timeout_s=0.3)
    upstream.plan(INFER, Reply(delay=1.0))
    body = _problem(_infer(api), 504, "timeout")
    assert body["detail"] == "The model's upstream did not answer in time."


def test_an_upstream_that_rejects_the_call_is_a_502_without_its_text(
    api, upstream, eager, caplog
) -> None:
    _remote(upstream.url)
    upstream.plan(INFER, Reply(400, {"error": "unexpected input 'x'"}))
    body = _problem(_infer(api), 502, "inference-failed")
    assert body["detail"] == "The model's upstream failed with HTTP 400."
    assert "unexpected input 'x'" in caplog.text  # the operator's


def test_an_invalid_remote_version_is_unavailable_in_the_api_and_admin(
    api, admin_client, eager
) -> None:
    row = make_version(
        "remote", runtime=ModelVersion.Runtime.OPENAI, options={"url": "ftp://nowhere"}
    )
    [version] = api.get("/v1/models/remote").json()["versions"]
    assert version["available"] is False
    reason = version["unavailable_reason"]
    assert reason.startswith("unavailable: invalid runtime_options: url must be an http://")
    body = _problem(_infer(api), 503, "model-unavailable")
    assert body["detail"] == reason
    page = admin_client.get("/admin/inference/modelversion/").content.decode()
    assert "url must be an http:// or https:// URL" in page
    page = admin_client.get(f"/admin/inference/modelversion/{row.pk}/change/").content.decode()
    assert "url must be an http:// or https:// URL" in page


def test_a_version_whose_key_variable_is_unset_is_unavailable(api, settings) -> None:
    settings.INFERENCE_UPSTREAM_KEYS = {}
    make_version(
        "remote",
        runtime=ModelVersion.Runtime.OPENAI,
        options={"url": "http://127.0.0.1:1/v1", "api_key_env": "UPSTREAM_KEY_VLLM"},
    )
    [version] = api.get("/v1/models/remote").json()["versions"]
    assert "UPSTREAM_KEY_VLLM (api_key_env) is not set" in version["unavailable_reason"]
    settings.INFERENCE_UPSTREAM_KEYS = {"UPSTREAM_KEY_VLLM": "sk-x"}
    [version] = api.get("/v1/models/remote").json()["versions"]
    assert version["available"] is True


def test_it_never_stores_an_api_key_in_runtime_options(admin_client) -> None:
    with pytest.raises(ValidationError, match="would store a secret"):
        make_version(
            "remote",
            runtime=ModelVersion.Runtime.OPENAI,
            options={"url": "http://x/v1", "api_key": "sk-live-123"},
        )
    from inference.models import Model

    model = Model.objects.create(name="remote2")
    response = admin_client.post(
        "/admin/inference/modelversion/add/",
        {
            "model": model.pk,
            "version": "1",
            "runtime": "kserve",
            "runtime_options": '{"url": "http://x", "token": "abc"}',
            "input_schema": "{}",
            "device": "cpu",
            "queue": "cpu",
            "max_batch_size": 8,
            "max_delay_ms": 5,
        },
    )
    assert response.status_code == 200  # the form again, with the error
    assert "would store a secret in the registry" in response.content.decode()
    assert not ModelVersion.objects.filter(model=model).exists()


def test_an_edited_url_is_loaded_afresh(api, eager) -> None:
    with fake_upstream() as old, fake_upstream() as new:
        row = _remote(old.url)
        assert _infer(api, 1).status_code == 200
        row.runtime_options = {**row.runtime_options, "url": new.url}
        row.save()
        from inference.worker import predict

        predict._specs.clear()  # the worker's 30 s spec cache, elapsed
        assert _infer(api, 2).json()["output"] == {"y": 4}
        assert len(old.calls(INFER)) == 1 and len(new.calls(INFER)) == 1


def test_an_openai_upstream_answers_sluices_chat_completions(api, upstream, eager) -> None:
    version_register(
        model_name="llm",
        version="1",
        runtime=ModelVersion.Runtime.OPENAI,
        runtime_options={"url": f"{upstream.url}/v1", "model": "fake-llm"},
        input_schema={
            "type": "object",
            "properties": {"prompt": {"type": "string"}, "max_tokens": {"type": "integer"}},
            "required": ["prompt"],
        },
        task="text",
        actor="test",
    ).activate(actor="test")
    response = api.post(
        "/v1/chat/completions",
        {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["choices"][0]["message"]["content"] == "user: hi assistant:"
    [call] = upstream.calls("/v1/chat/completions")
    assert call.body["model"] == "fake-llm" and call.body["max_tokens"] == 5


def test_upstream_keys_come_from_the_environment_or_files(tmp_path) -> None:
    import os
    import subprocess
    import sys

    secret = tmp_path / "vllm-key"
    secret.write_text("sk-from-file\n")
    env = {
        **os.environ,
        "DEBUG": "true",
        "UPSTREAM_KEY_TRITON": "sk-plain",
        "UPSTREAM_KEY_VLLM_FILE": str(secret),
        "NOT_AN_UPSTREAM_KEY": "x",
    }
    code = (
        "import django, json; django.setup(); from django.conf import settings; "
        "print(json.dumps(settings.INFERENCE_UPSTREAM_KEYS))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    keys = json.loads(out.stdout.strip().splitlines()[-1])
    assert keys == {"UPSTREAM_KEY_TRITON": "sk-plain", "UPSTREAM_KEY_VLLM": "sk-from-file"}
