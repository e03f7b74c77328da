"""Runtime registry: runtime name → class. Adding an engine is one module and one line here."""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string

from inference.runtimes.base import Runtime, RuntimeUnavailable, VersionSpec

RUNTIMES: dict[str, str] = {
    "onnx": "inference.runtimes.onnx.OnnxRuntime",
    "python": "inference.runtimes.python.PythonRuntime",
    "kserve": "inference.runtimes.kserve.KServeRuntime",
    "openai": "inference.runtimes.openai_remote.OpenAIRemoteRuntime",
    "transformers": "inference.runtimes.transformers.TransformersRuntime",
    "onnx-textgen": "inference.runtimes.onnx_textgen.OnnxTextgenRuntime",
}

__all__ = ["RUNTIMES", "Runtime", "RuntimeUnavailable", "VersionSpec", "runtime_class"]


def runtime_class(name: str) -> type[Runtime]:
    try:
        path = RUNTIMES[name]
    except KeyError as exc:
        raise RuntimeUnavailable(f"unavailable: unknown runtime {name!r}") from exc
    cls: type[Runtime] = import_string(path)
    return cls


def unavailable_reason(runtime: str, options: dict[str, Any]) -> str | None:
    """Why a version with this runtime and options cannot serve here, or None if it can."""
    try:
        return runtime_class(runtime).unavailable(options)
    except RuntimeUnavailable as exc:
        return str(exc)
