from __future__ import annotations

import logging

import pytest

from inference.registry.builtin import DIGITS_OPTIONS
from inference.runtimes import RuntimeUnavailable, VersionSpec, runtime_class, unavailable_reason
from inference.runtimes.onnx import OnnxRuntime


def _spec(**kw) -> VersionSpec:
    return VersionSpec(
        id=1, model="digits", version="1", runtime="onnx", options=DIGITS_OPTIONS, **kw
    )


def test_it_runs_onnx_on_cpu_and_warms_up(digits_onnx) -> None:
    runtime = OnnxRuntime(_spec())
    runtime.load(digits_onnx)
    runtime.warmup()
    assert runtime.session.get_providers() == ["CPUExecutionProvider"]
    [out] = runtime.predict([{"pixels": [0.0] * 64}])
    assert set(out) == {"label", "probabilities"} and isinstance(out["label"], int)
    runtime.close()
    assert runtime.session is None


def test_it_falls_back_to_cpu_when_cuda_is_asked_for_but_absent(digits_onnx, caplog) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    runtime = OnnxRuntime(_spec(device="cuda"))
    with caplog.at_level(logging.WARNING, logger="inference.runtimes.onnx"):
        runtime.load(digits_onnx)
    assert runtime.session.get_providers() == ["CPUExecutionProvider"]
    assert "no CUDA provider" in caplog.text


def test_it_refuses_to_load_without_an_engine_or_an_artifact(monkeypatch, digits_onnx) -> None:
    with pytest.raises(RuntimeUnavailable, match="no ONNX artifact"):
        OnnxRuntime(_spec()).load(None)
    monkeypatch.setattr(OnnxRuntime, "engines", ("sluice_absent_engine",))
    with pytest.raises(RuntimeUnavailable, match="is not installed"):
        OnnxRuntime(_spec()).load(digits_onnx)


def test_it_names_an_unknown_runtime() -> None:
    assert unavailable_reason("tensorrt", {}) == "unavailable: unknown runtime 'tensorrt'"
    with pytest.raises(RuntimeUnavailable):
        runtime_class("tensorrt")
    assert "dotted path" in (unavailable_reason("python", {}) or "")
