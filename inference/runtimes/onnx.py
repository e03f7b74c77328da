"""ONNX Runtime: CPU by default, the CUDA provider when the version asks for cuda and the
installed onnxruntime has it. ``onnxruntime`` and ``numpy`` are imported inside this module's
methods only.

runtime_options:
    inputs:  {"<onnx input name>": {"field": "<input field>", "dtype": "float32"}}
             (default: each ONNX input is fed from the input field of the same name)
    outputs: ["label", "probabilities"] (default: every output)
    threads: intra-op threads (default 1: the worker's thread pool is the parallelism)
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from inference.runtimes.base import (
    INSTALL_HINT,
    Item,
    Runtime,
    RuntimeUnavailable,
    missing_engine,
)

log = logging.getLogger(__name__)


class OnnxRuntime(Runtime):
    name = "onnx"
    # The modules this runtime needs; tests point it at a missing one to fake an absent engine.
    engines: ClassVar[tuple[str, ...]] = ("onnxruntime", "numpy")

    session: Any = None
    _feeds: dict[str, tuple[str, str]]
    _outputs: list[str]

    @classmethod
    def unavailable(cls, options: dict[str, Any]) -> str | None:
        return missing_engine(cls.engines, INSTALL_HINT)

    def load(self, artifact: bytes | None) -> None:
        reason = self.unavailable(self.spec.options)
        if reason:
            raise RuntimeUnavailable(reason)
        if not artifact:
            raise RuntimeUnavailable(f"unavailable: {self.spec.label} has no ONNX artifact")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(self.spec.options.get("threads", 1))
        providers = ["CPUExecutionProvider"]
        if self.spec.device == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("%s asks for cuda; onnxruntime has no CUDA provider", self.spec.label)
        self.session = ort.InferenceSession(artifact, sess_options=opts, providers=providers)
        declared = self.spec.options.get("inputs") or {}
        self._feeds = {}
        for node in self.session.get_inputs():
            conf = declared.get(node.name, {})
            dtype = conf.get("dtype") or _dtype_of(node.type)
            self._feeds[node.name] = (conf.get("field", node.name), dtype)
        names = [o.name for o in self.session.get_outputs()]
        self._outputs = list(self.spec.options.get("outputs") or names)

    def predict(self, batch: list[Item]) -> list[Item]:
        import numpy as np

        feeds = {
            name: np.asarray([item[field] for item in batch], dtype=dtype)
            for name, (field, dtype) in self._feeds.items()
        }
        results = self.session.run(self._outputs, feeds)
        return [
            {name: _plain(values[row]) for name, values in zip(self._outputs, results, strict=True)}
            for row in range(len(batch))
        ]

    def warmup(self) -> None:
        import numpy as np

        feeds = {}
        for node in self.session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in node.shape]
            feeds[node.name] = np.zeros(shape, dtype=self._feeds[node.name][1])
        self.session.run(self._outputs, feeds)

    def close(self) -> None:
        self.session = None


def _dtype_of(onnx_type: str) -> str:
    return {
        "tensor(float)": "float32",
        "tensor(double)": "float64",
        "tensor(int64)": "int64",
        "tensor(int32)": "int32",
        "tensor(string)": "object",
        "tensor(bool)": "bool",
    }.get(onnx_type, "float32")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON-ready Python values."""
    return value.tolist() if hasattr(value, "tolist") else value
