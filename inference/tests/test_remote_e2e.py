"""The remote runtimes against real servers nobody here wrote or faked:

- ``kserve`` against MLServer 1.7 (scikit-learn runtime, its own virtualenv: testing/mlserver.py)
  serving a digits classifier: directly, through Sluice in-process, and through a live
  ``manage.py serve`` driven by the real ``tritonclient``;
- ``openai`` against Sluice's own OpenAI-compatible ``/v1/embeddings`` on a live
  ``manage.py serve``, with the key passed by reference.

When MLServer's virtualenv cannot be built the MLServer tests skip, saying why; under CI=true
they fail instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from inference.models import Model, ModelVersion
from inference.registry.builtin import DIGITS_SCHEMA
from inference.registry.services import version_register
from inference.runtimes.base import UpstreamError, VersionSpec
from inference.runtimes.kserve import KServeRuntime
from inference.runtimes.openai_remote import OpenAIRemoteRuntime
from inference.tests.fakes import LetterEmbedder
from testing import mlserver as mls
from testing.processes import free_port, manage, own_database, running, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

DIGITS_REMOTE = {
    "model": mls.MODEL,
    "version": mls.MODEL_VERSION,
    "outputs": ["label", "probabilities"],
    "output_tensors": {"label": "predict", "probabilities": "predict_proba"},
    "output_datatypes": {"label": "INT64", "probabilities": "FP32"},
}
LOOPBACK = "127.0.0.0/8"
TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


@pytest.fixture(autouse=True)
def _loopback_upstreams(settings: Any) -> None:
    """MLServer and the live Sluice listen on 127.0.0.1: allowed here, and in the live server."""
    settings.INFERENCE_REMOTE_ALLOWED_NETWORKS = [LOOPBACK]


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    try:
        mls.ensure_venv()
    except mls.Unavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"MLServer is required under CI=true: {exc}")
        pytest.skip(f"MLServer 1.7 cannot be set up here: {exc}")
    with mls.mlserver(tmp_path_factory.mktemp("mlserver")) as server:
        yield server


@pytest.fixture(scope="module")
def sluice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A live ``manage.py serve`` (web + in-process worker) on a database of its own, with a
    tenant, its key and a cheap embedding model (``letters``)."""
    tmp = tmp_path_factory.mktemp("sluice")
    with own_database(tmp) as url:
        env = server_env(
            url,
            RATELIMIT_IP_RATE="10000/h",
            MEDIA_ROOT=str(tmp / "media"),
            INFERENCE_PRELOAD="false",
            INFERENCE_REMOTE_ALLOWED_NETWORKS=LOOPBACK,
        )
        manage(env, "migrate", "--no-input", "-v0")
        manage(env, "createtenant", "e2e")
        key = manage(env, "createapikey", "--tenant", "e2e", "--scopes", "infer")
        manage(
            env,
            "registermodel",
            "letters",
            "1",
            "--runtime",
            "python",
            "--handler",
            "inference.tests.fakes.LetterEmbedder",
            "--task",
            "embedding",
            "--input-schema",
            json.dumps(TEXT_SCHEMA),
            "--activate",
        )
        port = free_port()
        cmd = [sys.executable, "manage.py", "serve", "--port", str(port)]
        with running(cmd, env, port=port, timeout=90) as base:
            yield {"base": base, "port": port, "key": key, "env": env}


def _spec(runtime: str, **options: Any) -> VersionSpec:
    return VersionSpec(id=10_000, model="remote", version="1", runtime=runtime, options=options)


# --- KServe v2: MLServer ----------------------------------------------------------------------


def test_kserve_sends_a_batch_to_mlserver_as_one_request(mlserver) -> None:
    base, metrics_port = mlserver
    runtime = KServeRuntime(_spec("kserve", url=base, **DIGITS_REMOTE))
    runtime.load(None)
    runtime.warmup()
    try:
        digits = load_digits()
        before = mls.infer_count(metrics_port)
        rows = runtime.predict([{"pixels": digits.data[i].tolist()} for i in range(16)])
        assert mls.infer_count(metrics_port) == before + 1
    finally:
        runtime.close()
    # Trained on all of the data: it knows these sixteen by heart.
    assert [row["label"] for row in rows] == digits.target[:16].tolist()
    for row in rows:
        assert len(row["probabilities"]) == 10
        assert abs(sum(row["probabilities"]) - 1) < 1e-6
        assert int(np.argmax(row["probabilities"])) == row["label"]


def test_kserve_logs_mlservers_own_error(mlserver, caplog) -> None:
    base, _ = mlserver
    runtime = KServeRuntime(
        _spec("kserve", url=base, model=mls.MODEL, inputs={"pixels": {"shape": [2]}}, retries=0)
    )
    runtime.load(None)
    try:
        with pytest.raises(UpstreamError, match="answered 500") as caught:
            runtime.predict([{"pixels": [1.0, 2.0]}])
    finally:
        runtime.close()
    assert caught.value.status == 502 and caught.value.upstream_status == 500
    assert "expecting 64 features" not in str(caught.value)  # the operator's, in the log
    assert "expecting 64 features" in caplog.text


def test_sluice_serves_an_mlserver_model_in_process(mlserver, api, eager) -> None:
    base, _ = mlserver
    version = version_register(
        model_name="digits-remote",
        version="1",
        runtime=ModelVersion.Runtime.KSERVE,
        runtime_options={"url": base, **DIGITS_REMOTE},
        input_schema=DIGITS_SCHEMA,
        task=Model.Task.CLASSIFICATION,
        max_batch_size=16,
        actor="test",
    )
    version.activate(actor="test")
    digits = load_digits()
    for n in (0, 1, 7):
        response = api.post(
            "/v1/models/digits-remote/infer",
            {"input": {"pixels": digits.data[n].tolist()}},
            format="json",
        )
        assert response.status_code == 200, response.content
        assert response.json()["output"]["label"] == digits.target[n]
    body = {
        "inputs": [
            {
                "name": "pixels",
                "shape": [4, 64],
                "datatype": "FP32",
                "data": digits.data[:4].ravel().tolist(),
            }
        ],
        "outputs": [{"name": "label"}],
    }
    response = api.post("/v2/models/digits-remote/infer", body, format="json")
    assert response.status_code == 200, response.content
    [label] = response.json()["outputs"]
    assert label["data"] == digits.target[:4].tolist()


def test_tritonclient_reaches_mlserver_through_a_live_sluice(mlserver, sluice) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    base, metrics_port = mlserver
    manage(
        sluice["env"],
        "registermodel",
        "digits-remote",
        "1",
        "--runtime",
        "kserve",
        "--options",
        json.dumps({"url": base, **DIGITS_REMOTE}),
        "--input-schema",
        json.dumps(DIGITS_SCHEMA),
        "--task",
        "classification",
        "--activate",
    )
    client = httpclient.InferenceServerClient(f"127.0.0.1:{sluice['port']}")
    headers = {"X-API-Key": sluice["key"]}
    assert client.is_model_ready("digits-remote", headers=headers)
    digits = load_digits()
    pixels = httpclient.InferInput("pixels", [8, 64], "FP32")
    pixels.set_data_from_numpy(digits.data[8:16].astype(np.float32), binary_data=False)
    wanted = [httpclient.InferRequestedOutput("label", binary_data=False)]
    before = mls.infer_count(metrics_port)
    result = client.infer("digits-remote", [pixels], outputs=wanted, headers=headers)
    assert result.as_numpy("label").tolist() == digits.target[8:16].tolist()
    # Eight rows went out as at most eight v2 calls (fewer when the worker batched them).
    assert 1 <= mls.infer_count(metrics_port) - before <= 8


# --- OpenAI-compatible: Sluice's own /v1/embeddings -------------------------------------------


def test_openai_runtime_embeds_through_sluices_own_endpoint(sluice, settings) -> None:
    settings.INFERENCE_UPSTREAM_KEYS = {"UPSTREAM_KEY_SLUICE": sluice["key"]}
    runtime = OpenAIRemoteRuntime(
        _spec(
            "openai",
            url=f"{sluice['base']}/v1",
            model="letters",
            endpoint="embeddings",
            api_key_env="UPSTREAM_KEY_SLUICE",
        )
    )
    runtime.load(None)
    runtime.warmup()  # GET /v1/models lists "letters" for this key
    try:
        texts = ["hello world", "a", "sluice remote runtimes"]
        rows = runtime.predict([{"text": t} for t in texts])
    finally:
        runtime.close()
    assert [row["embedding"] for row in rows] == [LetterEmbedder.embed(t) for t in texts]


def test_openai_runtime_reports_a_refused_key(sluice, settings) -> None:
    settings.INFERENCE_UPSTREAM_KEYS = {"UPSTREAM_KEY_SLUICE": "sk_live_nope.nope"}
    runtime = OpenAIRemoteRuntime(
        _spec("openai", url=f"{sluice['base']}/v1", api_key_env="UPSTREAM_KEY_SLUICE")
    )
    runtime.load(None)
    with pytest.raises(UpstreamError, match="answered 401") as caught:
        runtime.warmup()
    assert caught.value.status == 502 and runtime.upstream is None


def test_a_remote_embedding_model_serves_sluices_embeddings_api(sluice, api, eager, settings):
    """Sluice in front of Sluice: /v1/embeddings here → the openai runtime → /v1/embeddings on
    the live server → its worker."""
    settings.INFERENCE_UPSTREAM_KEYS = {"UPSTREAM_KEY_SLUICE": sluice["key"]}
    version = version_register(
        model_name="letters-remote",
        version="1",
        runtime=ModelVersion.Runtime.OPENAI,
        runtime_options={
            "url": f"{sluice['base']}/v1",
            "model": "letters",
            "endpoint": "embeddings",
            "api_key_env": "UPSTREAM_KEY_SLUICE",
        },
        input_schema=TEXT_SCHEMA,
        task=Model.Task.EMBEDDING,
        actor="test",
    )
    version.activate(actor="test")
    # One text: several would be served from threads, which SQLite's in-memory test
    # database (shared with this test's transaction) cannot take; the runtime's batching is
    # tested above against the live server.
    response = api.post(
        "/v1/embeddings",
        {"model": "letters-remote", "input": "remote embeddings", "encoding_format": "float"},
        format="json",
    )
    assert response.status_code == 200, response.content
    [row] = response.json()["data"]
    assert row["embedding"] == LetterEmbedder.embed("remote embeddings")
