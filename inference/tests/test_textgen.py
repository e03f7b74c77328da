"""The built-in ``textgen`` model: trained offline from the bundled text, cached, registered
on the transformers runtime; unavailable with the install hint when torch is missing."""

from __future__ import annotations

import functools
import math

import pytest

from inference.models import ModelVersion
from inference.registry import textgen
from inference.registry.builtin import TEXTGEN, textgen_install
from inference.runtimes import VersionSpec
from inference.runtimes.transformers import TransformersRuntime

pytest.importorskip("torch")
pytest.importorskip("transformers")

SMALL = textgen.Recipe(vocab_size=400, n_embd=32, n_layer=1, n_head=2, block=32, steps=40)


@pytest.fixture
def small_builds(monkeypatch, tmp_path):
    monkeypatch.setattr(textgen, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(textgen, "textgen_build", functools.partial(textgen.textgen_build, SMALL))


def test_the_corpus_is_the_bundled_public_domain_text() -> None:
    chapters = textgen.corpus()
    assert len(chapters) == 50
    assert chapters[0].startswith("In the beginning God created the heaven and the earth.")
    assert not any(c.startswith("#") for c in chapters)


def test_training_beats_a_uniform_guess_and_is_cached(small_builds) -> None:
    built = textgen.textgen_build()
    assert not built.cached
    assert built.loss < math.log(SMALL.vocab_size) - 0.5  # learned something about the text
    again = textgen.textgen_build()
    assert again.cached and again.archive == built.archive


@pytest.mark.django_db
def test_install_registers_a_streaming_text_model_once(small_builds) -> None:
    version, created = textgen_install(actor="test")
    assert created
    assert version.runtime == ModelVersion.Runtime.TRANSFORMERS
    assert version.model.task == "text"
    assert version.state == ModelVersion.State.ACTIVE and version.traffic_weight == 100
    again, created_again = textgen_install(actor="test")
    assert (again.pk, created_again) == (version.pk, False)
    runtime = TransformersRuntime(
        VersionSpec(
            id=version.pk,
            model=TEXTGEN,
            version=version.version,
            runtime="transformers",
            options=version.runtime_options,
        )
    )
    with version.artifact.open("rb") as fh:
        runtime.load(fh.read())
    chunks = list(runtime.stream({"prompt": "And God said", "max_tokens": 10}))
    assert chunks[-1]["completion_tokens"] <= 10
    assert "".join(c["text"] for c in chunks[:-1]) == chunks[-1]["text"]
    runtime.close()


@pytest.mark.django_db
def test_without_torch_it_is_unavailable_until_an_install_with_torch(
    small_builds, monkeypatch, tmp_path
) -> None:
    from inference.catalog import selectors

    monkeypatch.setattr(TransformersRuntime, "engines", ("sluice_absent_torch",))
    placeholder, created = textgen_install(actor="test")
    assert created and not placeholder.artifact
    reason = selectors.version_unavailable(placeholder)
    assert reason and "pip install -r requirements-models-extra.txt" in reason
    assert textgen_install(actor="test") == (placeholder, False)
    monkeypatch.setattr(TransformersRuntime, "engines", ("torch", "transformers"))
    real, created = textgen_install(actor="test")
    assert created and real.checksum
    real.model.refresh_from_db()
    placeholder.refresh_from_db()
    assert real.model.stable_version_id == real.pk
    assert placeholder.state == ModelVersion.State.RETIRED
